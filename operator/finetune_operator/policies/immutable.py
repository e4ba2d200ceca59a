"""Spec fields that cannot change while a job runs (everything but runPolicy)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_operator import api, kuberay
from finetune_operator.api import Phase
from finetune_operator.kuberay import JobDeploymentStatus


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
