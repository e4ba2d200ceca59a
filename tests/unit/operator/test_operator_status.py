"""Status through the API's models: only what changed, finished jobs stay finished, long
messages are cut, stored junk is left out, and one Event per new phase or reason."""

from __future__ import annotations

import datetime

import pytest
from finetune_operator.actions import Event
from finetune_operator.api import Phase
from finetune_operator.outcome import Outcome
from finetune_operator.phases import Observation
from finetune_operator.status import parse_status, status_patch, status_update, truncate

NOW, LATER = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"
RUNNING = Observation(Phase.RUNNING, "Running", "training is running")


def test_first_observation_writes_everything() -> None:
    rayjob = {"status": {"startTime": "2025-12-31T23:59:00Z"}}
    update = status_update(
        {}, RUNNING, now=NOW, generation=1, rayjob=rayjob, rayjob_name="j", attempts=1
    )
    assert update["phase"] == "Running"
    assert update["startTime"] == "2025-12-31T23:59:00Z"
    assert (update["observedGeneration"], update["rayJobName"], update["attempts"]) == (1, "j", 1)
    assert "completionTime" not in update


def test_same_observation_changes_nothing() -> None:
    first = status_update({}, RUNNING, now=NOW, generation=1, rayjob_name="j", attempts=1)
    again = status_update(first, RUNNING, now=LATER, generation=1, rayjob_name="j", attempts=1)
    assert again == {}


def test_finishing_sets_completion_time_once() -> None:
    running = status_update({}, RUNNING, now=NOW, rayjob={"status": {"x": 1}})
    done = Observation(Phase.SUCCEEDED, "Completed", "training finished")
    update = status_update(running, done, now=LATER, rayjob={"status": {"x": 1}})
    assert update["completionTime"] == LATER
    assert "startTime" not in update  # kept from before


def test_finished_job_stays_finished() -> None:
    failed = {"phase": "Failed", "reason": "AppFailed"}
    assert status_update(failed, RUNNING, now=NOW) == {}


def test_long_message_keeps_head_and_tail() -> None:
    message = "Traceback:\n" + "x" * 5000 + "\nCUDA out of memory"
    cut = truncate(message, 200)
    assert len(cut) <= 200
    assert cut.startswith("Traceback:")
    assert cut.endswith("CUDA out of memory")
    update = status_update({}, Observation(Phase.FAILED, "AppFailed", message), now=NOW)
    assert len(update["message"]) <= 1024


def test_stored_status_round_trips_through_the_model() -> None:
    stored = status_update({}, RUNNING, now=NOW, generation=1, rayjob_name="j", attempts=1)
    stored["progress"] = {"step": 5, "totalSteps": 10, "trainLoss": 1.5}
    stored["lastCheckpoint"] = {"step": 5, "uri": "s3://out/ckpt-5"}
    assert parse_status(stored).to_wire() == stored


@pytest.mark.parametrize(
    ("stored", "kept"),
    [
        # A field from another version of the operator, or a value that does not parse.
        ({"phase": "Running", "lastCheckpointStep": 40}, {"phase": "Running"}),
        ({"phase": "Running", "attempts": "many"}, {"phase": "Running"}),
        ({"phase": "Exploded", "reason": "X"}, {"reason": "X"}),
        ({"progress": {"step": 3, "gpuTemp": 80}}, {"progress": {"step": 3}}),
        ({"lastCheckpoint": {"uri": "s3://x"}}, {}),
        (
            {"conditions": [{"type": "Ready", "status": "True"}, "junk",
                            {"type": "Running", "status": "True", "severity": "Info"}]},
            {"conditions": [{"type": "Running", "status": "True"}]},
        ),
        (None, {}),
    ],
)  # fmt: skip
def test_unknown_or_invalid_status_fields_are_left_out(stored, kept) -> None:
    wire = parse_status(stored).to_wire()
    assert {key: value for key, value in wire.items() if value != []} == kept


def test_status_patch_is_the_wire_difference() -> None:
    old = parse_status({"phase": "Running", "reason": "Running", "attempts": 1})
    new = old.model_copy(update={"attempts": 2, "reason": None})
    assert status_patch(old, new) == {"attempts": 2, "reason": None}
    assert status_patch(old, old) == {}


def test_status_update_ignores_stored_junk() -> None:
    stored = {"phase": "Running", "lastCheckpointStep": 40, "conditions": ["junk"]}
    update = status_update(stored, RUNNING, now=NOW)
    assert "lastCheckpointStep" not in update
    assert [c["type"] for c in update["conditions"]] == [
        "Running",
        "Succeeded",
        "Failed",
        "Suspended",
    ]


def outcome(stored: dict) -> Outcome:
    return Outcome(parse_status(stored), datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))


@pytest.mark.parametrize(
    ("stored", "observation", "event"),
    [
        ({}, RUNNING, ("Normal", "Running", "Running: training is running")),
        ({"phase": "Running", "reason": "Running"}, Observation(Phase.RUNNING, "RayJobFinishing", "m"),
         ("Normal", "RayJobFinishing", "Running: m")),
        ({}, Observation(Phase.FAILED, "AppFailed", "OOM"), ("Warning", "AppFailed", "Failed: OOM")),
        ({}, Observation(Phase.PENDING, "KubeRayMissing", "install"), ("Warning", "KubeRayMissing", "Pending: install")),
    ],
)  # fmt: skip
def test_a_new_phase_or_reason_gets_an_event_after_the_queued_ones(
    stored, observation, event
) -> None:
    pass_ = outcome(stored)
    queued = Event("Normal", "Suspending", "stopping")
    pass_.queue(queued)
    pass_.observe(observation)
    events = pass_.events(pass_.patch())
    assert events[0] == queued
    assert [(e.type_, e.reason, e.message) for e in events[1:]] == [event]


def test_same_phase_and_reason_posts_only_queued_events() -> None:
    pass_ = outcome(status_update({}, RUNNING, now=NOW))
    pass_.observe(Observation(Phase.RUNNING, "Running", "a new message"))
    assert pass_.patch()  # the message changed
    assert pass_.events(pass_.patch()) == []


def test_last_observation_of_a_pass_wins() -> None:
    pass_ = outcome({})
    pass_.observe(RUNNING)
    pass_.observe(Observation(Phase.FAILED, "DeadlineExceeded", "too long"))
    assert pass_.patch()["phase"] == "Failed"
    assert [e.reason for e in pass_.events(pass_.patch())] == ["DeadlineExceeded"]


def test_finished_job_outcome_writes_nothing() -> None:
    pass_ = outcome({"phase": "Succeeded", "reason": "Completed"})
    assert pass_.finished
    pass_.observe(RUNNING)
    assert pass_.patch() == {}
    assert pass_.events({}) == []
