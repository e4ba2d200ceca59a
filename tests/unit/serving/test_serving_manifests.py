"""The vLLM and KServe manifests for LoRA, merged and full outputs on pvc:// and s3://.

Each is checked the way a cluster would: kubernetes-validate for the built-in kinds, KServe
v0.20.0's own InferenceService schema (and what its structural schema would prune), and the
Pod Security "restricted" profile for the vLLM pod.
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from finetune_trainer.serving.kserve import build_kserve
from finetune_trainer.serving.served_model import ServedModel, served_model_of
from finetune_trainer.serving.vllm import ServingOptions, build_vllm, lora_rank_limit

from tests.factories import MakeJob
from tests.pod_security_standards import template_violations
from tests.unit.operator.operator_unit_support import pruned_fields
from tests.unit.serving.serving_support import inference_service_schema, kserve_schema_errors

KUBERNETES_VERSIONS = ["1.27.0", "1.37.0"]
DESTINATIONS = {"pvc": "pvc://outputs/support-bot", "s3": "s3://models-out/support-bot"}
BASES = {
    "pvc": "pvc://models/llama-8b",
    "s3": "s3://base-models/llama-8b",
    "hf": "hf://meta-llama/Llama-3.1-8B",
}


def served(kind: str, destination: str, base: str = "pvc", **changes: Any) -> ServedModel:
    record = ServedModel(
        name="support-bot",
        kind=kind,  # type: ignore[arg-type]
        output_uri=DESTINATIONS[destination],
        base_model=BASES[base],
        namespace="ml-team",
        secret_name="storage-credentials",
        lora_rank=16 if kind != "full" else None,
    )
    return record.with_changes(**changes)


CASES = [(kind, dest, base) for kind in ("lora", "merged", "full") for dest in DESTINATIONS for base in BASES
         if kind == "lora" or base == "pvc"]  # fmt: skip


def by_kind(documents: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def vllm_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = by_kind(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize(("kind", "destination", "base"), CASES)
def test_vllm_manifests_are_valid_kubernetes_objects_that_restricted_admits(
    kind, destination, base
):
    documents = build_vllm(served(kind, destination, base))
    assert [d["kind"] for d in documents] == ["Deployment", "Service"]
    for document in documents:
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(document, version, strict=True)
        assert template_violations(document) == []


@pytest.mark.parametrize(("kind", "destination", "base"), CASES)
def test_inference_service_validates_against_kserve_v0_20_with_nothing_pruned(
    kind, destination, base
):
    documents = build_kserve(served(kind, destination, base))
    service = by_kind(documents, "InferenceService")
    assert kserve_schema_errors(service) == []
    assert pruned_fields(service, inference_service_schema()) == []
    for document in documents:
        if document["kind"] != "InferenceService":
            kubernetes_validate.validate(document, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_kserve_schema_check_catches_a_misspelt_field():
    service = by_kind(build_kserve(served("full", "pvc")), "InferenceService")
    service["spec"]["predictor"]["model"]["storageURI"] = service["spec"]["predictor"]["model"].pop(
        "storageUri"
    )
    assert pruned_fields(service, inference_service_schema()) == ["spec.predictor.model.storageURI"]


def test_lora_on_a_claim_serves_the_base_with_the_adapter_as_a_lora_module():
    documents = build_vllm(served("lora", "pvc"))
    container = vllm_container(documents)
    args = container["args"]
    assert args[0] == "/mnt/pvc/models/llama-8b"  # the base model, where its claim is mounted
    assert "--enable-lora" in args
    assert (
        args[args.index("--lora-modules") + 1] == "support-bot=/mnt/pvc/outputs/support-bot/adapter"
    )
    # Chat requests are templated as in training: the adapter folder holds that tokenizer.
    assert args[args.index("--tokenizer") + 1] == "/mnt/pvc/outputs/support-bot/adapter"
    pod = by_kind(documents, "Deployment")["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"models": True, "outputs": True}
    assert "initContainers" not in pod  # nothing to download


@pytest.mark.parametrize("kind", ["merged", "full"])
def test_merged_and_full_outputs_serve_the_model_folder(kind):
    args = vllm_container(build_vllm(served(kind, "pvc")))["args"]
    assert args[:3] == ["/mnt/pvc/outputs/support-bot/model", "--served-model-name", "support-bot"]
    assert "--enable-lora" not in args
    service = by_kind(build_kserve(served(kind, "pvc")), "InferenceService")
    assert service["spec"]["predictor"]["model"]["storageUri"] == "pvc://outputs/support-bot/model"
    assert service["spec"]["predictor"]["model"]["modelFormat"] == {"name": "huggingface"}


def test_s3_files_come_through_an_init_container_with_the_jobs_credentials():
    documents = build_vllm(
        served("lora", "s3", "s3"), ServingOptions(trainer_image="registry.local/trainer:1")
    )
    pod = by_kind(documents, "Deployment")["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    assert fetch["image"] == "registry.local/trainer:1"
    assert sorted(fetch["command"][-2:]) == [
        "s3://base-models/llama-8b",
        "s3://models-out/support-bot/adapter",
    ]
    assert fetch["envFrom"] == [{"secretRef": {"name": "storage-credentials"}}]
    args = vllm_container(documents)["args"]
    # Where the fetch puts them (the storage cache layout: bucket, then key).
    assert args[0] == "/models/base-models/llama-8b"
    assert (
        args[args.index("--lora-modules") + 1]
        == "support-bot=/models/models-out/support-bot/adapter"
    )


def test_an_hf_base_model_is_downloaded_by_vllm_with_the_token_from_the_secret():
    documents = build_vllm(served("lora", "pvc", "hf", base_revision="v2"))
    container = vllm_container(documents)
    assert container["args"][0] == "meta-llama/Llama-3.1-8B"
    assert container["args"][container["args"].index("--revision") + 1] == "v2"
    assert container["envFrom"] == [{"secretRef": {"name": "storage-credentials"}}]
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} not in container["env"]


def test_the_vllm_server_is_ready_on_health_and_asks_for_gpus():
    container = vllm_container(build_vllm(served("full", "pvc"), ServingOptions(gpus=4)))
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["args"][container["args"].index("--tensor-parallel-size") + 1] == "4"
    assert {"name": "VLLM_NO_USAGE_STATS", "value": "1"} in container["env"]


@pytest.mark.parametrize(
    ("rank", "limit"), [(None, 8), (8, 8), (12, 16), (16, 16), (64, 64), (300, 320)]
)
def test_max_lora_rank_holds_the_adapter(rank, limit):
    assert lora_rank_limit(rank) == limit


def test_kserve_lora_mounts_base_and_adapter_under_mnt_models():
    predictor = by_kind(build_kserve(served("lora", "s3", "pvc")), "InferenceService")["spec"][
        "predictor"
    ]
    assert predictor["storageUris"] == [
        {"uri": "pvc://models/llama-8b", "mountPath": "/mnt/models/base"},
        {"uri": "s3://models-out/support-bot/adapter", "mountPath": "/mnt/models/adapter"},
    ]
    args = predictor["model"]["args"]
    assert "--model_dir=/mnt/models/base" in args and "--backend=vllm" in args
    assert "--tokenizer=/mnt/models/adapter" in args
    assert args[args.index("--lora-modules") + 1] == "support-bot=/mnt/models/adapter"
    assert "storageUri" not in predictor["model"]  # KServe refuses both at once


def test_kserve_lora_on_an_hf_base_names_it_by_id():
    model = by_kind(build_kserve(served("lora", "pvc", "hf")), "InferenceService")["spec"][
        "predictor"
    ]["model"]
    assert model["storageUri"] == "pvc://outputs/support-bot/adapter"
    assert "--model_id=meta-llama/Llama-3.1-8B" in model["args"]
    assert model["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "storage-credentials"


@pytest.mark.parametrize(
    ("destination", "secret", "account"),
    [
        ("s3", "storage-credentials", True),
        ("s3", None, False),
        ("pvc", "storage-credentials", False),
    ],
)
def test_kserve_gets_a_service_account_for_s3_credentials_only(destination, secret, account):
    documents = build_kserve(served("full", destination, secret_name=secret) if secret else
                             ServedModel(name="support-bot", kind="full", output_uri=DESTINATIONS[destination], base_model="x"))  # fmt: skip
    kinds = [d["kind"] for d in documents]
    assert kinds == (["ServiceAccount", "InferenceService"] if account else ["InferenceService"])
    if account:
        assert documents[0]["secrets"] == [{"name": "storage-credentials"}]
        assert (
            documents[1]["spec"]["predictor"]["serviceAccountName"]
            == documents[0]["metadata"]["name"]
        )


@pytest.mark.parametrize(
    ("method", "merge", "kind"),
    [
        ("lora", False, "lora"),
        ("qlora", False, "lora"),
        ("lora", True, "merged"),
        ("full", False, "full"),
    ],
)
def test_the_record_follows_what_the_job_writes(method, merge, kind):
    spec = MakeJob("support-bot").spec(method={"type": method}, output={"mergeAdapter": merge},
                                       model={"source": "pvc://models/llama-8b", "secretRef": {"name": "creds"}})  # fmt: skip
    record = served_model_of(spec.typed(), "pvc://outputs/support-bot/")
    assert record.kind == kind
    assert record.output_uri == "pvc://outputs/support-bot"
    assert record.secret_name == "creds"
    assert record.weights_uri == "pvc://outputs/support-bot/" + (
        "adapter" if kind == "lora" else "model"
    )
