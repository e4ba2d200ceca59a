"""status_update: only what changed, finished jobs stay finished, long messages are cut."""

from __future__ import annotations

from finetune_operator.api import Phase
from finetune_operator.phases import Observation
from finetune_operator.status import status_update, truncate

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
