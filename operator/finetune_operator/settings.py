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
    # The port the driver on the Ray head serves GET /progress on (design §5): the builder
    # declares it on the head container, the poller asks for it on the head service.
    progress_port: int = 8266
    # How often a running job's /progress is read, and how long one read may take.
    progress_poll_seconds: float = 5.0
    progress_timeout_seconds: float = 3.0
    # At most one progress-driven status write per job in this window (the final result and
    # phase changes are never held back).
    progress_write_seconds: float = 15.0
    # How long reads may fail before the job shows ProgressAvailable=False and a Warning.
    progress_grace_seconds: float = 60.0
    # Failed reads back off exponentially up to this.
    progress_backoff_max_seconds: float = 60.0
    # HTTP reads in flight at once, over all jobs.
    progress_concurrency: int = 64
    # At most one CheckpointSaved Event per job in this window (status shows every one).
    checkpoint_event_seconds: float = 300.0
    # Usage statistics of Ray and Hugging Face from the trainer pods: off unless an admin opts
    # in (FINETUNE_TRAINER_TELEMETRY=true); see no_phone_home.
    trainer_telemetry: bool = False

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
            ("FINETUNE_PROGRESS_POLL_SECONDS", "progress_poll_seconds"),
            ("FINETUNE_PROGRESS_WRITE_SECONDS", "progress_write_seconds"),
            ("FINETUNE_PROGRESS_GRACE_SECONDS", "progress_grace_seconds"),
        ):
            if env.get(name):
                try:
                    overrides[field] = float(env[name])
                except ValueError:
                    raise ValueError(
                        f"{name} must be a number of seconds, got {env[name]!r}"
                    ) from None
        if env.get("FINETUNE_PROGRESS_PORT"):
            port = env["FINETUNE_PROGRESS_PORT"]
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"FINETUNE_PROGRESS_PORT must be a port number, got {port!r}")
            overrides["progress_port"] = int(port)
        if env.get("FINETUNE_TRAINER_TELEMETRY"):
            overrides["trainer_telemetry"] = _switch(
                "FINETUNE_TRAINER_TELEMETRY", env["FINETUNE_TRAINER_TELEMETRY"]
            )
        return dataclasses.replace(cls(), **overrides)  # type: ignore[arg-type]


def _whole_number(name: str, text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {text!r}") from None
    if value < lowest:
        raise ValueError(f"{name} must be at least {lowest}, got {value}")
    return value


def _switch(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {text!r}")
