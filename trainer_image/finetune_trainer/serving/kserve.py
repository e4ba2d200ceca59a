"""Pure builder: a served model in, a KServe InferenceService on its Hugging Face runtime out.

`storageUri` is the output location itself: pvc:// and s3:// are KServe storage URIs
(KServe mounts the claim, or its storage initializer downloads the prefix to /mnt/models).
LoRA: KServe's Hugging Face runtime (huggingfaceserver) runs vLLM and passes vLLM's own
`--enable-lora` / `--lora-modules` through, registering each adapter as a model of its
own. The base model and the adapter come in through the predictor's `storageUris` (KServe
>= 0.16: several URIs, each with its mountPath under /mnt/models), or, for an hf:// base
model, `--model_id` with the adapter alone as the storageUri.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import pod_security
from finetune_operator.settings import Settings

from finetune_trainer.serving.served_model import ServedModel
from finetune_trainer.serving.vllm import ServingOptions, labels, lora_rank_limit

API_VERSION = "serving.kserve.io/v1beta1"
MOUNT_ROOT = "/mnt/models"  # KServe's default model mount


def kserve_service_account(served: ServedModel) -> str:
    return f"{served.name}-kserve"


def build_kserve(
    served: ServedModel, options: ServingOptions | None = None
) -> list[dict[str, Any]]:
    """The InferenceService, preceded by the ServiceAccount that lends it S3 credentials
    when its files are in s3:// and the job had a secretRef."""
    options = options or ServingOptions()
    model: dict[str, Any] = {
        "modelFormat": {"name": "huggingface"},
        "resources": {
            "requests": {"cpu": options.cpu, "memory": options.memory},
            "limits": {"memory": options.memory, "nvidia.com/gpu": str(options.gpus)},
        },
        "securityContext": pod_security.container_security_context(),
    }
    predictor: dict[str, Any] = {"model": model}
    uris: list[str]
    if served.kind == "lora":
        args, uris = _lora(served, model, predictor)
    else:
        model["storageUri"] = served.weights_uri
        args, uris = [], [served.weights_uri]
    if served.trust_remote_code:
        args.append("--trust_remote_code")
    if options.gpus > 1:
        args.append(f"--tensor-parallel-size={options.gpus}")
    if args:
        model["args"] = args
    # The pod runs as the trainer image's user, who owns what the job wrote to the claims.
    predictor["securityContext"] = pod_security.pod_security_context(Settings())
    documents: list[dict[str, Any]] = []
    if served.secret_name and any(uri.startswith("s3://") for uri in uris):
        predictor["serviceAccountName"] = kserve_service_account(served)
        documents.append(_service_account(served))
    service = {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": _metadata(served, served.name),
        "spec": {"predictor": predictor},
    }
    return [*documents, service]


def _lora(
    served: ServedModel, model: dict[str, Any], predictor: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """The runtime's arguments and the storage URIs for base model + adapter."""
    # The runtime names the model after the InferenceService; the adapter takes that name
    # (what clients ask for), so the base model gets another. Later flags win.
    args = [f"--model_name={served.name}-base", "--backend=vllm", "--enable-lora",
            f"--max-lora-rank={lora_rank_limit(served.lora_rank)}"]  # fmt: skip
    if served.base_model.startswith("hf://"):
        model["storageUri"] = served.weights_uri
        args += [f"--model_id={served.base_model.removeprefix('hf://')}",
                 f"--model_revision={served.base_revision}", f"--tokenizer={MOUNT_ROOT}",
                 "--lora-modules", f"{served.name}={MOUNT_ROOT}"]  # fmt: skip
        if served.secret_name:
            model["env"] = [_hf_token(served.secret_name)]
        return args, [served.weights_uri]
    base_path, adapter_path = f"{MOUNT_ROOT}/base", f"{MOUNT_ROOT}/adapter"
    predictor["storageUris"] = [
        {"uri": served.base_model, "mountPath": base_path},
        {"uri": served.weights_uri, "mountPath": adapter_path},
    ]
    # The adapter folder holds the tokenizer training used, chat template included.
    args += [f"--model_dir={base_path}", f"--tokenizer={adapter_path}",
             "--lora-modules", f"{served.name}={adapter_path}"]  # fmt: skip
    return args, [served.base_model, served.weights_uri]


def _hf_token(secret: str) -> dict[str, Any]:
    selector = {"name": secret, "key": "HF_TOKEN", "optional": True}
    return {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": selector}}


def _service_account(served: ServedModel) -> dict[str, Any]:
    """KServe's storage initializer takes S3 credentials from the Secrets its ServiceAccount
    lists; see the README for the key names and endpoint annotation it reads there."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(served, kserve_service_account(served)),
        "secrets": [{"name": served.secret_name}],
        "automountServiceAccountToken": False,
    }


def _metadata(served: ServedModel, name: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels(served, "kserve")}
    if served.namespace:
        metadata["namespace"] = served.namespace
    return metadata
