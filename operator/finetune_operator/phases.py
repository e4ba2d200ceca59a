"""The phase machine: what a RayJob's status means for its FineTuneJob.

KubeRay reports two fields that move separately: `jobDeploymentStatus` (the RayJob's own
lifecycle, which alone decides whether KubeRay is done) and `jobStatus` (the Ray job's, as
seen on the dashboard). They disagree at times, e.g. a Ray job still RUNNING when KubeRay
already failed the RayJob for its deadline, or a FAILED Ray job KubeRay is about to retry.
The deployment status wins: the job is finished only when KubeRay says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from finetune_operator.api import Phase


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the RayJob says about the job: its phase and why."""

    phase: Phase
    reason: str
    message: str


DEPLOYMENT_TERMINAL = ("Complete", "Failed", "ValidationFailed")
STARTING = ("", "New", "Validated", "Waiting", "Initializing")
RAY_FAILED = ("FAILED", "STOPPED")


def is_deployment_terminal(deployment: str) -> bool:
    return deployment in DEPLOYMENT_TERMINAL


def phase_from_rayjob(status: Mapping[str, Any] | None) -> Observation:
    """The FineTuneJob's phase, reason and message for one RayJob status."""
    status = status or {}
    deployment = str(status.get("jobDeploymentStatus") or "")
    ray = str(status.get("jobStatus") or "")
    message = str(status.get("message") or "")
    reason = str(status.get("reason") or "")

    match deployment:
        case "Complete" if ray in RAY_FAILED:
            return Observation(
                Phase.FAILED, reason or "AppFailed", message or f"the Ray job ended {ray}"
            )
        case "Complete":
            return Observation(Phase.SUCCEEDED, "Completed", message or "training finished")
        case "Failed" | "ValidationFailed":
            default = "ValidationFailed" if deployment == "ValidationFailed" else "RayJobFailed"
            detail = message or f"KubeRay marked the RayJob {deployment} (Ray job: {ray or 'none'})"
            return Observation(Phase.FAILED, reason or default, detail)
        case "Suspending" | "Suspended":
            return Observation(
                Phase.SUSPENDED, "Suspended", message or "the Ray cluster is stopped"
            )
        case "Retrying":
            return Observation(
                Phase.INITIALIZING,
                "Retrying",
                message or "an attempt failed; KubeRay starts a new Ray cluster (backoffLimit)",
            )
        case "Running" if ray in RAY_FAILED:
            return Observation(
                Phase.RUNNING,
                "RayJobFinishing",
                message or f"the Ray job is {ray}; waiting for KubeRay to retry or fail the RayJob",
            )
        case "Running":
            return Observation(Phase.RUNNING, "Running", message or "training is running")
        case "" if not status:
            return Observation(
                Phase.PENDING, "RayJobCreated", "waiting for KubeRay to start the RayJob"
            )
        case _ if deployment in STARTING:
            return Observation(
                Phase.INITIALIZING, "Initializing", message or "the Ray cluster is starting"
            )
        case _:
            return Observation(
                Phase.INITIALIZING,
                "UnknownRayJobStatus",
                f"KubeRay reports jobDeploymentStatus {deployment!r}, which this operator "
                "does not know",
            )


def attempts_from_rayjob(status: Mapping[str, Any] | None) -> int | None:
    """Ray cluster attempts so far: finished ones plus the one under way, if any."""
    if not status:
        return None
    finished = int(status.get("failed") or 0) + int(status.get("succeeded") or 0)
    deployment = str(status.get("jobDeploymentStatus") or "")
    under_way = 0 if is_deployment_terminal(deployment) else 1
    return max(finished + under_way, 1)
