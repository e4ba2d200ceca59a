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


def ray_failure(code: int, *log: str) -> str:
    """Ray's job message for a failed entrypoint, as KubeRay copies it to the RayJob."""
    tail = "".join(line + "\n" for line in log)
    return (
        f"Job entrypoint command failed with exit code {code}, "
        f"last available logs (truncated to 20,000 chars):\n{tail}"
    )


BAD_DATA = "finetune run: /etc/finetune/job.yaml: pvc://data/bad.jsonl: 3 of 3 records are malformed (100%); first: bad.jsonl:1 (not JSON)"

TRAINER_CASES = [
    # (jobDeploymentStatus, jobStatus, message) -> (phase, reason, message)
    # Refused input fails the job at once, even while KubeRay would retry it.
    (
        "Retrying",
        "FAILED",
        ray_failure(2, "note: 1 worker", BAD_DATA),
        Phase.FAILED,
        "InvalidInput",
        BAD_DATA.removeprefix("finetune run: "),
    ),
    (
        "Running",
        "FAILED",
        ray_failure(2, BAD_DATA),
        Phase.FAILED,
        "InvalidInput",
        BAD_DATA.removeprefix("finetune run: "),
    ),
    (
        "Failed",
        "FAILED",
        ray_failure(2, "progress 0%\r" + BAD_DATA),
        Phase.FAILED,
        "InvalidInput",
        BAD_DATA.removeprefix("finetune run: "),
    ),
    # A training failure may pass on another cluster: KubeRay's decision stands, in the trainer's words.
    (
        "Retrying",
        "FAILED",
        ray_failure(1, "finetune run: training failed: rank 0 died"),
        Phase.INITIALIZING,
        "Retrying",
        "an attempt failed: training failed: rank 0 died; KubeRay starts a new Ray cluster",
    ),
    (
        "Failed",
        "FAILED",
        ray_failure(1, "finetune run: training failed: rank 0 died"),
        Phase.FAILED,
        "AppFailed",
        "training failed: rank 0 died",
    ),
    # Exit code 2 without the trainer's line is not known to be bad input (another program said it).
    (
        "Retrying",
        "FAILED",
        ray_failure(2, "usage: something else"),
        Phase.INITIALIZING,
        "Retrying",
        ray_failure(2, "usage: something else"),
    ),
    # A killed driver leaves no trainer line: KubeRay's message as it is.
    (
        "Failed",
        "FAILED",
        ray_failure(-9, "step 4/12"),
        Phase.FAILED,
        "AppFailed",
        ray_failure(-9, "step 4/12"),
    ),
]


@pytest.mark.parametrize(
    ("deployment", "ray", "message", "phase", "reason", "expected"), TRAINER_CASES
)
def test_a_failure_the_trainer_explained_reads_in_its_words(
    deployment, ray, message, phase, reason, expected
) -> None:
    status = {"jobDeploymentStatus": deployment, "jobStatus": ray, "message": message}
    if deployment == "Failed":
        status["reason"] = "AppFailed"
    observation = phase_from_rayjob(status)
    assert (observation.phase, observation.reason, observation.message) == (phase, reason, expected)


def test_an_ended_job_counts_no_attempt_under_way() -> None:
    status = {"jobDeploymentStatus": "Retrying", "failed": 1}
    assert attempts_from_rayjob(status) == 2
    assert attempts_from_rayjob(status, ended=True) == 1
