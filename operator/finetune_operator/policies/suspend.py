"""runPolicy.suspend: the user's wish wins over what the RayJob reports until KubeRay follows."""

from __future__ import annotations

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
