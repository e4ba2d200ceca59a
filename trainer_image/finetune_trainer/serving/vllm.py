"""Pure builders: a served model in, the vLLM Deployment and Service that serve it out.

The files reach the pod the way the trainer's inputs reach it: a pvc:// claim is mounted
read-only at /mnt/pvc/CLAIM (the trainer's own convention), an s3:// folder is downloaded
by an init container running the trainer image with the job's secretRef as its
environment (the same AWS_* keys and S3 endpoint the job used), and an hf:// base model is
downloaded by vLLM itself with HF_TOKEN from that Secret.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import naming, pod_security
from finetune_operator.settings import Settings

from finetune_trainer.serving.served_model import ServedModel

VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
PORT = 8000
MODELS_DIR = "/models"  # the init container's downloads (an emptyDir)
HOME_DIR = "/home/vllm"  # vLLM, Triton and Hugging Face caches (an emptyDir)
# vLLM's --max-lora-rank accepts only these; the default (16) refuses larger adapters.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
# No usage reports leave the building (vLLM sends them unless told not to).
PRIVATE_ENV = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
SELECTOR_KEYS = ("app.kubernetes.io/name", "app.kubernetes.io/instance")


@dataclass(frozen=True)
class ServingOptions:
    """What a platform team chooses for serving, as opposed to what the job decided."""

    vllm_image: str = VLLM_IMAGE
    trainer_image: str | None = None  # default: the job's image, else the operator's default
    gpus: int = 1
    cpu: str = "4"
    memory: str = "32Gi"


def vllm_name(served: ServedModel) -> str:
    return f"{served.name}-vllm"


def labels(served: ServedModel, app: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": served.name,
        "app.kubernetes.io/part-of": "finetune-operator",
        naming.JOB_LABEL: served.name,
    }


def lora_rank_limit(rank: int | None) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds the adapter's rank."""
    needed = rank or LORA_RANKS[0]
    return next((limit for limit in LORA_RANKS if limit >= needed), LORA_RANKS[-1])


@dataclass
class _Placement:
    """Where each URI's files are in the pod, and the volumes and downloads that put them there."""

    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    mounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    downloads: list[str] = field(default_factory=list)

    def place(self, uri: str) -> str:
        """The path in the pod (or the Hugging Face id) that holds `uri`'s files."""
        if uri.startswith("pvc://"):
            claim, _, path = uri.removeprefix("pvc://").partition("/")
            volume = naming.pvc_volume_name(claim)
            self.volumes[volume] = {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
            root = f"{naming.PVC_ROOT}/{claim}"
            self.mounts[volume] = {"name": volume, "mountPath": root, "readOnly": True}
            return f"{root}/{path.strip('/')}".rstrip("/")
        if uri.startswith("s3://"):
            self.downloads.append(uri)
            # Where storage.fetch_to_cache puts it: the cache root, then bucket and key.
            return f"{MODELS_DIR}/{uri.removeprefix('s3://').strip('/')}"
        return uri.removeprefix("hf://")  # a Hugging Face id; vLLM downloads it


def build_vllm(served: ServedModel, options: ServingOptions | None = None) -> list[dict[str, Any]]:
    """The Deployment and the Service of an OpenAI-compatible vLLM server for `served`."""
    options = options or ServingOptions()
    placement = _Placement()
    weights = placement.place(served.weights_uri)
    if served.kind == "lora":
        base = placement.place(served.base_model)
        # The adapter folder holds the tokenizer training used, chat template included.
        args = [base, "--tokenizer", weights, "--served-model-name", f"{served.name}-base",
                "--enable-lora", "--max-lora-rank", str(lora_rank_limit(served.lora_rank)),
                "--lora-modules", f"{served.name}={weights}"]  # fmt: skip
        if served.base_model.startswith("hf://"):
            args += ["--revision", served.base_revision]
    else:
        args = [weights, "--served-model-name", served.name]
    args += ["--host", "0.0.0.0", "--port", str(PORT)]
    if served.trust_remote_code:
        args.append("--trust-remote-code")
    if options.gpus > 1:
        args += ["--tensor-parallel-size", str(options.gpus)]
    return [_deployment(served, options, args, placement), _service(served)]


def _deployment(
    served: ServedModel, options: ServingOptions, args: list[str], placement: _Placement
) -> dict[str, Any]:
    from_hub = served.kind == "lora" and served.base_model.startswith("hf://")
    env = dict(PRIVATE_ENV) | {"HOME": HOME_DIR}
    if not from_hub:
        env["HF_HUB_OFFLINE"] = "1"  # every file is in the pod: never reach for the Hub
    container: dict[str, Any] = {
        "name": "vllm",
        "image": options.vllm_image,
        "command": ["vllm", "serve"],
        "args": args,
        "env": [{"name": key, "value": value} for key, value in env.items()],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(options),
        # Loading tens of GB of weights takes minutes: the startup probe allows 30 of them
        # before the liveness probe may restart the pod.
        "startupProbe": _health_probe(period=10, failures=180),
        "readinessProbe": _health_probe(period=10, failures=3),
        "livenessProbe": _health_probe(period=30, failures=3),
        "volumeMounts": [
            {"name": "home", "mountPath": HOME_DIR},
            pod_security.shm_mount(),
            *placement.mounts.values(),
        ],
        "securityContext": pod_security.container_security_context(),
    }
    if served.secret_name and from_hub:
        container["envFrom"] = [{"secretRef": {"name": served.secret_name}}]  # HF_TOKEN
    volumes = [
        {"name": "home", "emptyDir": {}},
        # vLLM's workers share tensors through /dev/shm; a container's default is 64 MiB.
        pod_security.shm_volume(pod_security.shm_size_limit(options.memory)),
        *placement.volumes.values(),
    ]
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        # The trainer image's user: it owns the files the job wrote to the claims.
        "securityContext": pod_security.pod_security_context(Settings()),
        "automountServiceAccountToken": False,  # the server never calls the Kubernetes API
    }
    if placement.downloads:
        volumes.append({"name": "models", "emptyDir": {}})
        models = {"name": "models", "mountPath": MODELS_DIR}
        container["volumeMounts"].append({**models, "readOnly": True})
        pod["initContainers"] = [_fetch_container(served, options, placement.downloads, models)]
    pod_labels = labels(served, "vllm")
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(served, vllm_name(served), pod_labels),
        "spec": {
            "replicas": 1,
            # A second pod during a rolling update would need a second set of GPUs.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": _selector(pod_labels)},
            "template": {"metadata": {"labels": pod_labels}, "spec": pod},
        },
    }


def _fetch_container(
    served: ServedModel, options: ServingOptions, uris: list[str], mount: dict[str, Any]
) -> dict[str, Any]:
    """The trainer image downloads the s3:// folders with the job's own S3 settings."""
    image = options.trainer_image or served.trainer_image or Settings.from_env().trainer_image
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": image,
        "command": ["python", "-m", "finetune_trainer.serving.fetch", "--into", MODELS_DIR, *uris],
        "resources": {
            "requests": {"cpu": "1", "memory": "2Gi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        },
        "volumeMounts": [copy.deepcopy(mount)],
        "securityContext": pod_security.container_security_context(),
    }
    if served.secret_name:
        # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL, as the job read them.
        container["envFrom"] = [{"secretRef": {"name": served.secret_name}}]
    return container


def _resources(options: ServingOptions) -> dict[str, Any]:
    limits: dict[str, str] = {"memory": options.memory, "nvidia.com/gpu": str(options.gpus)}
    return {"requests": {"cpu": options.cpu, "memory": options.memory}, "limits": limits}


def _health_probe(*, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
    }


def _service(served: ServedModel) -> dict[str, Any]:
    pod_labels = labels(served, "vllm")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(served, vllm_name(served), pod_labels),
        "spec": {
            "selector": _selector(pod_labels),
            "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _selector(pod_labels: dict[str, str]) -> dict[str, str]:
    """The labels that tell this server's pods apart; the others may change between versions."""
    return {key: pod_labels[key] for key in SELECTOR_KEYS}


def _metadata(served: ServedModel, name: str, object_labels: dict[str, str]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": dict(object_labels)}
    if served.namespace:
        metadata["namespace"] = served.namespace
    return metadata
