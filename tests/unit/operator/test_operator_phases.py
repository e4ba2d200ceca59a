"""The phase machine: each RayJob status, including the disagreeing ones, maps to one phase."""

from __future__ import annotations

import pytest
from finetune_operator.api import Phase
from finetune_operator.phases import attempts_from_rayjob, phase_from_rayjob

CASES = [
    # (jobDeploymentStatus, jobStatus, reason) -> (phase, reason)
    (None, None, None, Phase.PENDING, "RayJobCreated"),
    ("", "", None, Phase.INITIALIZING, "Initializing"),
    ("New", "", None, Phase.INITIALIZING, "Initializing"),
    ("Initializing", "", None, Phase.INITIALIZING, "Initializing"),
    ("Waiting", "", None, Phase.INITIALIZING, "Initializing"),
    ("Running", "PENDING", None, Phase.RUNNING, "Running"),
    ("Running", "RUNNING", None, Phase.RUNNING, "Running"),
    # The Ray job ended, KubeRay has not decided yet (it may retry): not finished.
    ("Running", "FAILED", None, Phase.RUNNING, "RayJobFinishing"),
    ("Running", "SUCCEEDED", None, Phase.RUNNING, "Running"),
    ("Complete", "SUCCEEDED", None, Phase.SUCCEEDED, "Completed"),
    ("Complete", "FAILED", None, Phase.FAILED, "AppFailed"),
    ("Complete", "STOPPED", None, Phase.FAILED, "AppFailed"),
    ("Failed", "FAILED", "AppFailed", Phase.FAILED, "AppFailed"),
    ("Failed", "", "SubmissionFailed", Phase.FAILED, "SubmissionFailed"),
    ("Failed", "", None, Phase.FAILED, "RayJobFailed"),
    # KubeRay failed the RayJob while Ray still reports RUNNING: KubeRay decides.
    ("Failed", "RUNNING", "DeadlineExceeded", Phase.FAILED, "DeadlineExceeded"),
    ("ValidationFailed", "", None, Phase.FAILED, "ValidationFailed"),
    ("Retrying", "FAILED", None, Phase.INITIALIZING, "Retrying"),
    ("Suspending", "RUNNING", None, Phase.SUSPENDED, "Suspended"),
    ("Suspended", "", None, Phase.SUSPENDED, "Suspended"),
    ("Exploding", "", None, Phase.INITIALIZING, "UnknownRayJobStatus"),
]


@pytest.mark.parametrize(("deployment", "ray", "reason", "phase", "expected_reason"), CASES)
def test_phase_from_rayjob(deployment, ray, reason, phase, expected_reason) -> None:
    status = None
    if deployment is not None:
        status = {"jobDeploymentStatus": deployment, "jobStatus": ray}
        if reason:
            status["reason"] = reason
    observation = phase_from_rayjob(status)
    assert (observation.phase, observation.reason) == (phase, expected_reason)
    assert observation.message


def test_kuberays_message_is_carried_over() -> None:
    status = {"jobDeploymentStatus": "Failed", "reason": "AppFailed", "message": "OOM on rank 3"}
    assert phase_from_rayjob(status).message == "OOM on rank 3"


@pytest.mark.parametrize(
    ("status", "attempts"),
    [
        (None, None),
        ({"jobDeploymentStatus": "Initializing"}, 1),
        ({"jobDeploymentStatus": "Running", "failed": 1}, 2),
        ({"jobDeploymentStatus": "Retrying", "failed": 2}, 3),
        ({"jobDeploymentStatus": "Complete", "succeeded": 1, "failed": 1}, 2),
        ({"jobDeploymentStatus": "Failed", "failed": 3}, 3),
        ({"jobDeploymentStatus": "Failed"}, 1),
    ],
)
def test_attempts_count_finished_and_current_clusters(status, attempts) -> None:
    assert attempts_from_rayjob(status) == attempts
