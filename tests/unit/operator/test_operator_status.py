"""Status through the API's models: only what changed, finished jobs stay finished, long
messages are cut, and stored junk is left out."""

from __future__ import annotations

import pytest
from finetune_operator.api import Phase
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
