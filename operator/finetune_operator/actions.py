"""What the policies decide, as plain values; `reconcile` carries them out.

A policy is a pure function from what it sees (the job, its status, its RayJob, the time) to
one of these, so that each can be tested with a table and no cluster.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from finetune_operator.phases import Observation


@dataclasses.dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post on the job once the pass has written its status."""

    type_: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class DeleteJob:
    """Delete the FineTuneJob; its children go with it through their ownerReferences."""

    why: str


@dataclasses.dataclass(frozen=True)
class WakeAt:
    """Reconcile the job again in `seconds`: a timed policy comes due then."""

    seconds: float


@dataclasses.dataclass(frozen=True)
class Fail:
    """End the job in this failed observation."""

    observation: Observation


@dataclasses.dataclass(frozen=True)
class PatchRayJob:
    """Merge-patch the job's RayJob, and tell the user why."""

    patch: dict[str, Any]
    event: Event


@dataclasses.dataclass(frozen=True)
class ApplySpec:
    """Rebuild the children from the edited spec: the RayJob runs nothing, so it is safe."""

    changed: tuple[str, ...]
    event: Event


@dataclasses.dataclass(frozen=True)
class KeepSpec:
    """Leave the children as built: the edit is not acted on and its generation not observed."""

    changed: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class FollowRayJob:
    """Mirror the named RayJob's status only: the current spec cannot be used."""

    name: str
