"""KubeRay's vocabulary: every status v1 defines parses, anything else is noticed."""

from __future__ import annotations

import pytest
from finetune_operator import kuberay
from finetune_operator.api import Phase
from finetune_operator.kuberay import JobDeploymentStatus, JobStatus
from finetune_operator.phases import phase_from_rayjob

# As ray-operator/apis/ray/v1/rayjob_types.go (v1.7) defines them.
KUBERAY_DEPLOYMENT_STATUSES = [
    "", "Initializing", "Running", "Complete", "Failed", "ValidationFailed",
    "Suspending", "Suspended", "Retrying", "Waiting",
]  # fmt: skip
TERMINAL = ("Complete", "Failed", "ValidationFailed")
RAY_JOB_STATUSES = ["", "PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED"]


def test_the_enums_mirror_kuberay_v1() -> None:
    assert [s.value for s in JobDeploymentStatus] == KUBERAY_DEPLOYMENT_STATUSES
    assert [s.value for s in JobStatus] == RAY_JOB_STATUSES


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        *[(value, JobDeploymentStatus(value)) for value in KUBERAY_DEPLOYMENT_STATUSES],
        (None, JobDeploymentStatus.NEW),
        ("New", JobDeploymentStatus.NEW),
        ("Validated", None),
        ("Exploding", None),
        ("complete", None),
    ],
)
def test_deployment_status(text, parsed) -> None:
    assert kuberay.deployment_status({"jobDeploymentStatus": text}) is parsed


@pytest.mark.parametrize(
    ("text", "parsed"),
    [*[(value, JobStatus(value)) for value in RAY_JOB_STATUSES], ("CRASHED", None)],
)
def test_job_status(text, parsed) -> None:
    assert kuberay.job_status({"jobStatus": text}) is parsed


@pytest.mark.parametrize(
    ("deployment", "terminal"),
    [
        ("Complete", True),
        ("Failed", True),
        ("ValidationFailed", True),
        *[(value, False) for value in KUBERAY_DEPLOYMENT_STATUSES if value not in TERMINAL],
        ("Exploding", False),
    ],
)
def test_one_terminal_test(deployment, terminal) -> None:
    assert kuberay.is_terminal({"status": {"jobDeploymentStatus": deployment}}) is terminal
    parsed = kuberay.deployment_status({"jobDeploymentStatus": deployment})
    assert (parsed is not None and parsed.is_terminal()) is terminal


@pytest.mark.parametrize("value", ["STOPPED", "SUCCEEDED", "FAILED"])
def test_ray_terminal_statuses(value) -> None:
    assert JobStatus(value).is_terminal()


@pytest.mark.parametrize("deployment", KUBERAY_DEPLOYMENT_STATUSES)
def test_every_kuberay_status_has_a_known_phase(deployment) -> None:
    observation = phase_from_rayjob({"jobDeploymentStatus": deployment})
    assert observation.reason != "UnknownRayJobStatus"
    assert (observation.phase.is_terminal()) is JobDeploymentStatus(deployment).is_terminal()


def test_a_status_kuberay_never_writes_is_unknown() -> None:
    observation = phase_from_rayjob({"jobDeploymentStatus": "Validated"})
    assert (observation.phase, observation.reason) == (Phase.INITIALIZING, "UnknownRayJobStatus")
    assert "'Validated'" in observation.message
