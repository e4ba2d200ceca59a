"""Pod Security "restricted" for every pod the operator asks KubeRay to create.

Namespaces that enforce the restricted profile refuse a pod that does not ask for it
explicitly, so the head, worker and submitter templates carry it from the start.
"""

from __future__ import annotations

import decimal
import re
from typing import Any

from finetune_operator.settings import Settings

SHM_VOLUME = "dshm"
SHM_PATH = "/dev/shm"
# Ray's object store takes up to 30 % of a node's memory from /dev/shm by default and NCCL
# keeps its intra-node buffers there too; tmpfs pages count against the container's memory
# limit, so half of it leaves the training process the other half. (Without a volume of our
# own, KubeRay mounts one as large as the whole limit, which lets /dev/shm alone starve it.)
SHM_FRACTION = decimal.Decimal("0.5")

_SUFFIXES = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}  # fmt: skip
_QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")


def quantity_bytes(quantity: str) -> decimal.Decimal:
    """Bytes in a memory quantity as the API validates it (`64Gi`, `500M`, `1.5Gi`)."""
    match = _QUANTITY.match(quantity)
    if match is None:
        raise ValueError(f"not a memory quantity: {quantity!r}")
    return decimal.Decimal(match[1]) * _SUFFIXES[match[2] or ""]


def shm_size_limit(memory: str) -> str:
    """The /dev/shm size for a container with this memory: SHM_FRACTION of it, in whole Mi."""
    mebibytes = int(quantity_bytes(memory) * SHM_FRACTION / 2**20)
    return f"{max(mebibytes, 1)}Mi"


def pod_security_context(settings: Settings) -> dict[str, Any]:
    """Pod-wide: a fixed non-root identity (the trainer image's user) and seccomp."""
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.trainer_uid,
        "runAsGroup": settings.trainer_gid,
        # Writable pvc:// claims are group-owned by this gid, so the trainer can write outputs;
        # the kubelet re-owns a claim only when its root differs, not file by file on every
        # start (a claim may hold terabytes of weights and data).
        "fsGroup": settings.trainer_gid,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Per container, where restricted wants it; KubeRay copies it onto the init containers
    it adds (the workers' wait-gcs-ready), so those pass too."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def shm_volume(size_limit: str) -> dict[str, Any]:
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": size_limit}}


def shm_mount() -> dict[str, Any]:
    return {"name": SHM_VOLUME, "mountPath": SHM_PATH}


# Policy scanners' findings that do not apply to Ray pods, each with its reason, as
# annotations checkov (and people reading the pods) understand. KubeRay copies a template's
# annotations onto the pods it creates.
_PROBES = "KubeRay adds the head and worker probes itself; the submitter runs once"
SCANNER_EXCEPTIONS = {
    "CKV_K8S_8": _PROBES,
    "CKV_K8S_9": _PROBES,
    "CKV_K8S_15": "the pull policy is Kubernetes' default for the image; pin a digest instead",
    "CKV_K8S_43": "the image is --trainer-image or spec.resources.image: pin a digest there",
    "CKV_K8S_40": "runs as the trainer image's own user (FINETUNE_TRAINER_UID), owner of its home",
    "CKV_K8S_22": "Ray writes its session files, logs and spilled objects under /tmp/ray",
    "CKV_K8S_35": "Hugging Face and S3 clients read tokens from the environment (model.secretRef)",
    "CKV2_K8S_6": "Ray picks ports at run time; the namespace's NetworkPolicy owns traffic rules",
}


def scanner_annotations() -> dict[str, str]:
    return {
        f"checkov.io/skip{number}": f"{check}={reason}"
        for number, (check, reason) in enumerate(sorted(SCANNER_EXCEPTIONS.items()), start=1)
    }
