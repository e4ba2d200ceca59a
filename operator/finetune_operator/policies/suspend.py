"""runPolicy.suspend: the user's wish wins over what the RayJob reports until KubeRay follows."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_operator import kuberay
from finetune_operator.actions import Event, PatchRayJob
from finetune_operator.api import Phase
from finetune_operator.phases import Observation


def apply_suspend(observation: Observation, *, suspend: bool) -> Observation:
    """The observation with spec.runPolicy.suspend taken into account."""
    if observation.phase.is_terminal():
        return observation  # a finished job stays finished whatever the spec says now
    if suspend:
        return Observation(
            Phase.SUSPENDED,
            "Suspended",
            "suspended by spec.runPolicy.suspend; set it to false to resume from the newest "
            "checkpoint",
        )
    if observation.phase is Phase.SUSPENDED:
        return Observation(
            Phase.PENDING,
            "Resuming",
            "resuming from the newest checkpoint; waiting for KubeRay to restart the Ray cluster",
        )
    return observation


def decide(rayjob: Mapping[str, Any], wanted: bool) -> PatchRayJob | None:
    """Make the RayJob's spec.suspend follow spec.runPolicy.suspend while KubeRay still acts
    on it (a finished RayJob is left as it ended)."""
    if bool((rayjob.get("spec") or {}).get("suspend")) == wanted or kuberay.is_terminal(rayjob):
        return None
    reason, verb = ("Suspending", "stopping") if wanted else ("Resuming", "restarting")
    message = f"spec.runPolicy.suspend is {str(wanted).lower()}: {verb} the Ray cluster"
    return PatchRayJob({"spec": {"suspend": wanted}}, Event("Normal", reason, message))
