"""KubeRay's vocabulary: the RayJob statuses of ray.io/v1, as `rayjob_types.go` (v1.7) defines
them, and the one test of whether KubeRay is done with a RayJob.

Every reading of a RayJob's status goes through `deployment_status` and `job_status`, so a
string KubeRay does not define is noticed in one place (None) instead of falling through a
comparison somewhere.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class JobDeploymentStatus(enum.StrEnum):
    """`status.jobDeploymentStatus`: the RayJob's own lifecycle, which KubeRay drives."""

    NEW = ""
    INITIALIZING = "Initializing"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    VALIDATION_FAILED = "ValidationFailed"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RETRYING = "Retrying"
    WAITING = "Waiting"

    def is_terminal(self) -> bool:
        """KubeRay will not move the RayJob on by itself: no cluster runs or will run.

        KubeRay's IsJobDeploymentTerminal names Complete and Failed; ValidationFailed is as
        final, since KubeRay's reconcile never leaves it (it requeues it as unknown).
        """
        return self in TERMINAL_DEPLOYMENTS


TERMINAL_DEPLOYMENTS = frozenset(
    {
        JobDeploymentStatus.COMPLETE,
        JobDeploymentStatus.FAILED,
        JobDeploymentStatus.VALIDATION_FAILED,
    }
)

# KubeRay's Go constant for "" is JobDeploymentStatusNew, and its docs call the state New:
# a status written as "New" (by hand, or by a tool that spells the state out) means the same.
ALIASES = {"New": JobDeploymentStatus.NEW}


class JobStatus(enum.StrEnum):
    """`status.jobStatus`: the Ray job's own status, as the Ray dashboard reports it."""

    NEW = ""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    def is_terminal(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.SUCCEEDED, JobStatus.FAILED)

    def ended_unsuccessfully(self) -> bool:
        return self in (JobStatus.STOPPED, JobStatus.FAILED)


def deployment_status(rayjob_status: Mapping[str, Any] | None) -> JobDeploymentStatus | None:
    """The RayJob's deployment status; None when KubeRay wrote a value it does not define."""
    text = str((rayjob_status or {}).get("jobDeploymentStatus") or "")
    if text in ALIASES:
        return ALIASES[text]
    try:
        return JobDeploymentStatus(text)
    except ValueError:
        return None


def job_status(rayjob_status: Mapping[str, Any] | None) -> JobStatus | None:
    """The Ray job's status; None when it is a value Ray does not define."""
    try:
        return JobStatus(str((rayjob_status or {}).get("jobStatus") or ""))
    except ValueError:
        return None


def is_terminal(rayjob: Mapping[str, Any]) -> bool:
    """Whether KubeRay is done with this RayJob (an unknown status is not an end)."""
    deployment = deployment_status(rayjob.get("status"))
    return deployment is not None and deployment.is_terminal()
