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

from finetune_operator import kuberay
from finetune_operator.api import Phase
from finetune_operator.kuberay import JobDeploymentStatus as Deployment
from finetune_operator.trainer_failure import read_failure

# The trainer refused the job's input (spec, data, model): no attempt can succeed.
INVALID_INPUT = "InvalidInput"


@dataclasses.dataclass(frozen=True)
class Observation:
    """What the RayJob says about the job: its phase and why."""

    phase: Phase
    reason: str
    message: str


def phase_from_rayjob(status: Mapping[str, Any] | None) -> Observation:
    """The FineTuneJob's phase, reason and message for one RayJob status; a failure the
    trainer explained reads as the trainer's own words."""
    observation = _phase_from_kuberay(status or {})
    failure = read_failure(str((status or {}).get("message") or ""))
    if failure is None or not failure.problems:
        return observation
    if failure.bad_input and observation.phase is not Phase.SUCCEEDED:
        return Observation(Phase.FAILED, INVALID_INPUT, failure.summary())
    match observation.reason:
        case "Retrying":
            message = f"an attempt failed: {failure.summary()}; KubeRay starts a new Ray cluster"
            return dataclasses.replace(observation, message=message)
        case "RayJobFinishing":
            return dataclasses.replace(observation, message=failure.summary())
    if observation.phase is Phase.FAILED:
        return dataclasses.replace(observation, message=failure.summary())
    return observation


def _phase_from_kuberay(status: Mapping[str, Any]) -> Observation:
    deployment = kuberay.deployment_status(status)
    ray = kuberay.job_status(status)
    ray_text = str(status.get("jobStatus") or "")
    message = str(status.get("message") or "")
    reason = str(status.get("reason") or "")
    ray_failed = ray is not None and ray.ended_unsuccessfully()

    match deployment:
        case Deployment.COMPLETE if ray_failed:
            return Observation(
                Phase.FAILED, reason or "AppFailed", message or f"the Ray job ended {ray_text}"
            )
        case Deployment.COMPLETE:
            return Observation(Phase.SUCCEEDED, "Completed", message or "training finished")
        case Deployment.FAILED | Deployment.VALIDATION_FAILED:
            ended = deployment.value
            default = "ValidationFailed" if ended == "ValidationFailed" else "RayJobFailed"
            detail = message or f"KubeRay marked the RayJob {ended} (Ray job: {ray_text or 'none'})"
            return Observation(Phase.FAILED, reason or default, detail)
        case Deployment.SUSPENDING | Deployment.SUSPENDED:
            return Observation(
                Phase.SUSPENDED, "Suspended", message or "the Ray cluster is stopped"
            )
        case Deployment.RETRYING:
            return Observation(
                Phase.INITIALIZING,
                "Retrying",
                message or "an attempt failed; KubeRay starts a new Ray cluster (backoffLimit)",
            )
        case Deployment.RUNNING if ray_failed:
            return Observation(
                Phase.RUNNING,
                "RayJobFinishing",
                message
                or f"the Ray job is {ray_text}; waiting for KubeRay to retry or fail the RayJob",
            )
        case Deployment.RUNNING:
            return Observation(Phase.RUNNING, "Running", message or "training is running")
        case Deployment.NEW if not status:
            return Observation(
                Phase.PENDING, "RayJobCreated", "waiting for KubeRay to start the RayJob"
            )
        case Deployment.NEW | Deployment.WAITING | Deployment.INITIALIZING:
            return Observation(
                Phase.INITIALIZING, "Initializing", message or "the Ray cluster is starting"
            )
        case _:
            return Observation(
                Phase.INITIALIZING,
                "UnknownRayJobStatus",
                f"KubeRay reports jobDeploymentStatus {str(status['jobDeploymentStatus'])!r}, "
                "which this operator does not know",
            )


def attempts_from_rayjob(status: Mapping[str, Any] | None, *, ended: bool = False) -> int | None:
    """Ray cluster attempts so far: finished ones plus the one under way, if any (none when
    the job `ended` though KubeRay would go on, e.g. on input no attempt can use)."""
    if not status:
        return None
    finished = int(status.get("failed") or 0) + int(status.get("succeeded") or 0)
    deployment = kuberay.deployment_status(status)
    stopped = ended or (deployment is not None and deployment.is_terminal())
    under_way = 0 if stopped else 1
    return max(finished + under_way, 1)
