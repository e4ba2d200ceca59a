"""Deterministic names and labels of a FineTuneJob's children."""

from __future__ import annotations

import hashlib

from finetune_operator import api

JOB_LABEL = "finetune.io/job"  # contract: on the RayJob and every pod template in it
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "finetune-operator"

SPEC_KEY = "job.yaml"  # contract with the trainer
SPEC_MOUNT_DIR = "/etc/finetune"
SPEC_PATH = f"{SPEC_MOUNT_DIR}/{SPEC_KEY}"
PVC_ROOT = "/mnt/pvc"

MAX_LABEL_LENGTH = 63


def rayjob_name(job_name: str) -> str:
    """The RayJob carries the job's own name: already a DNS-1035 label of <= 47 characters."""
    if len(job_name) > api.MAX_NAME_LENGTH:
        raise ValueError(f"job name {job_name!r} is longer than {api.MAX_NAME_LENGTH} characters")
    return job_name


def configmap_name(job_name: str) -> str:
    return f"{job_name}-spec"


def pvc_volume_name(claim: str) -> str:
    """A volume name (DNS-1123 label) for a claim; long claims keep a hash to stay unique."""
    name = f"pvc-{claim}"
    if len(name) <= MAX_LABEL_LENGTH:
        return name
    digest = hashlib.sha256(claim.encode()).hexdigest()[:8]
    return f"{name[: MAX_LABEL_LENGTH - 9].rstrip('-')}-{digest}"


def pvc_claim(uri: str) -> str | None:
    """The claim of a pvc://claim/path URI, else None."""
    if not uri.startswith("pvc://"):
        return None
    return uri.removeprefix("pvc://").split("/", 1)[0]
