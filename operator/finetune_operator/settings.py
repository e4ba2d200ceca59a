"""The operator's own settings: what a cluster admin configures, not what a job asks for."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

DEFAULT_TRAINER_IMAGE = "ghcr.io/finetune-operator/trainer:0.1.0"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the builders and handlers need besides the job itself."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    ray_version: str = "2.60.0"
    # The user the Ray pods run as: the trainer image's `ray` user (rayproject/ray images
    # create it with uid 1000 in group users, gid 100). Images built on another base set theirs.
    trainer_uid: int = 1000
    trainer_gid: int = 100
    # Resources of the Ray head: it runs the driver only (no training), so it stays small.
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    submitter_cpu: str = "500m"
    submitter_memory: str = "512Mi"
    # Watches are edge-triggered; this timer re-reads every unfinished job as a safety net and
    # bounds how late a TTL or deadline can act.
    resync_seconds: float = 30.0
    # How often a job waiting for KubeRay's RayJob API asks again.
    kuberay_retry_seconds: float = 30.0
    # How soon a reconcile that hit a transient API error (5xx, 429, a race) runs again.
    retry_seconds: float = 5.0
    # Status messages longer than this are cut (KubeRay may carry a whole traceback).
    max_message_length: int = 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings with FINETUNE_* environment variables applied (the Helm chart sets them)."""
        env = os.environ if env is None else env
        overrides: dict[str, object] = {}
        if env.get("FINETUNE_TRAINER_IMAGE"):
            overrides["trainer_image"] = env["FINETUNE_TRAINER_IMAGE"]
        if env.get("FINETUNE_RAY_VERSION"):
            overrides["ray_version"] = env["FINETUNE_RAY_VERSION"]
        # uid 0 would be root, which restricted Pod Security refuses; gid 0 it allows.
        for name, field, lowest in (
            ("FINETUNE_TRAINER_UID", "trainer_uid", 1),
            ("FINETUNE_TRAINER_GID", "trainer_gid", 0),
        ):
            if env.get(name):
                overrides[field] = _whole_number(name, env[name], lowest)
        for name, field in (
            ("FINETUNE_RESYNC_SECONDS", "resync_seconds"),
            ("FINETUNE_KUBERAY_RETRY_SECONDS", "kuberay_retry_seconds"),
        ):
            if env.get(name):
                try:
                    overrides[field] = float(env[name])
                except ValueError:
                    raise ValueError(
                        f"{name} must be a number of seconds, got {env[name]!r}"
                    ) from None
        return dataclasses.replace(cls(), **overrides)  # type: ignore[arg-type]


def _whole_number(name: str, text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if value < lowest:
        raise ValueError(f"{name} must be at least {lowest}, got {value}")
    return value
