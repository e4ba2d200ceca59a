"""Spec edits: what may change while a job runs (only runPolicy), when an edit reaches the
children, and what an edit that cannot be used does.

Every decision about an edited spec is made here: the kopf update handler asks which Events
to post (`edit_events`), a reconcile pass asks what to do with the children (`decide`) and
what to do with a spec that no longer validates (`on_invalid_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_operator import api, kuberay
from finetune_operator.actions import ApplySpec, Event, Fail, FollowRayJob, KeepSpec
from finetune_operator.api import FineTuneJobStatus, Phase
from finetune_operator.kuberay import JobDeploymentStatus
from finetune_operator.phases import Observation


def refused_changes(
    old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any] | None, phase: Phase | None
) -> list[str]:
    """`spec.<field>` for each frozen field that changed while the job is active."""
    if phase is None or not phase.is_active():
        return []
    return changed_fields(old_spec, new_spec)


def changed_fields(
    old_spec: Mapping[str, Any] | None, new_spec: Mapping[str, Any] | None
) -> list[str]:
    """`spec.<field>` for each frozen field whose value differs."""
    old_spec, new_spec = old_spec or {}, new_spec or {}
    return [
        f"spec.{name}"
        for name in api.FROZEN_WHILE_RUNNING
        if old_spec.get(name) != new_spec.get(name)
    ]


def can_apply_now(rayjob: Mapping[str, Any]) -> bool:
    """A suspended RayJob runs no pods: a changed spec can replace the one it carries."""
    deployment = kuberay.deployment_status(rayjob.get("status"))
    suspended = bool((rayjob.get("spec") or {}).get("suspend"))
    return deployment is JobDeploymentStatus.SUSPENDED or (
        deployment is JobDeploymentStatus.NEW and suspended
    )


def decide(
    carried_spec: Mapping[str, Any] | None,
    job: api.FineTuneJob,
    phase: Phase,
    rayjob: Mapping[str, Any],
) -> ApplySpec | KeepSpec | None:
    """What an edit since the children were built does: None when there is none (the spec in
    effect is the job's), applied while the RayJob is suspended, else kept out."""
    changed = tuple(changed_fields(carried_spec, job.spec.to_wire()))
    if not changed:
        return None
    if phase.is_terminal() or not can_apply_now(rayjob):
        return KeepSpec(changed)
    message = (
        f"{', '.join(changed)} changed while suspended: the RayJob now carries the new spec, "
        "used when the job resumes"
    )
    return ApplySpec(changed, Event("Normal", "SpecApplied", message))


def on_invalid_spec(status: FineTuneJobStatus, problems: str) -> FollowRayJob | Fail:
    """A spec that does not validate fails a job that has not started; once its RayJob exists,
    the edit is refused and the job keeps following the RayJob built from its earlier spec."""
    if status.ray_job_name:
        return FollowRayJob(status.ray_job_name)
    return Fail(Observation(Phase.FAILED, "InvalidSpec", problems))


def edit_events(
    old_spec: Mapping[str, Any] | None,
    new_spec: Mapping[str, Any] | None,
    status: FineTuneJobStatus,
    problems: str,
) -> list[Event]:
    """Warnings for an edit that has no effect: an invalid spec on a job that already has its
    RayJob, or a frozen field changed while the job is active."""
    if problems:
        if not status.ray_job_name:
            return []  # the reconcile fails the job with InvalidSpec and says so
        message = f"the edited spec is invalid and has no effect: {problems}"
        return [Event("Warning", "SpecChangeRefused", message)]
    refused = refused_changes(old_spec, new_spec, status.phase)
    if not refused or status.phase is None:
        return []
    message = (
        f"{', '.join(refused)} cannot change while the job is {status.phase.value}; only "
        "spec.runPolicy can. The change has no effect: suspend the job first, or create a "
        "new FineTuneJob"
    )
    return [Event("Warning", "SpecChangeRefused", message)]
