"""The pure builders: what the ConfigMap and RayJob carry for each kind of job."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import yaml
from finetune_operator import naming
from finetune_operator.builders import build_configmap, build_rayjob
from finetune_operator.settings import Settings
from finetune_operator.validation import load_job_file

from tests.factories import MakeJob
from tests.unit.operator.operator_unit_support import (
    ROOT,
    pruned_fields,
    rayjob_schema,
    schema_errors,
)

SETTINGS = Settings(trainer_image="registry.local/trainer:1")


def head_of(rayjob: dict[str, Any]) -> dict[str, Any]:
    return rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]


def workers_of(rayjob: dict[str, Any]) -> dict[str, Any]:
    groups = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert len(groups) == 1
    return groups[0]


def pod_templates(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "head": head_of(rayjob)["template"],
        "worker": workers_of(rayjob)["template"],
        "submitter": rayjob["spec"]["submitterPodTemplate"],
    }


# Axes of variation; every combination below must give a RayJob KubeRay accepts unchanged.
VARIATIONS: dict[str, list[dict[str, Any]]] = {
    "shape": [
        {},
        {
            "spec.resources.workers": 4,
            "spec.resources.gpusPerWorker": 8,
            "spec.hyperparameters.batchSize": 64,
        },
        {"spec.resources.gpusPerWorker": 0, "spec.resources.cpusPerWorker": 2},
    ],
    "storage": [
        {},
        {
            "spec.model.source": "pvc://models/llama",
            "spec.dataset.train.source": "pvc://data/train.jsonl",
            "spec.dataset.validation": {"source": "pvc://data/val.jsonl"},
            "spec.output.destination": "pvc://results/run-1",
        },
        {
            "spec.model.secretRef": {"name": "hf-token"},
            "spec.output.destination": "pvc://models/out",
        },
    ],
    "scheduling": [
        {},
        {
            "spec.resources.nodeSelector": {"gpu": "h100"},
            "spec.resources.tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": "pool", "value": "train", "tolerationSeconds": 60, "effect": "NoExecute"},
            ],
            "spec.resources.priorityClassName": "high",
            "spec.resources.image": "registry.local/custom:2",
        },
    ],
    "policy": [
        {},
        {"spec.runPolicy": {"suspend": True, "queueName": "team-a", "backoffLimit": 0}},
        {"spec.runPolicy": {"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 60}},
    ],
}
COMBINATIONS = [
    {k: v for part in parts for k, v in part.items()}
    for parts in itertools.product(*VARIATIONS.values())
]


@pytest.mark.parametrize("overrides", COMBINATIONS)
def test_every_rayjob_validates_against_kuberays_crd(overrides: dict[str, Any]) -> None:
    rayjob = build_rayjob(MakeJob.operator().set_all(overrides).typed(), SETTINGS)
    assert schema_errors(rayjob) == []
    assert pruned_fields(rayjob, rayjob_schema()) == []


def test_pruning_checker_catches_unknown_fields() -> None:
    rayjob = build_rayjob(MakeJob.operator().typed(), SETTINGS)
    rayjob["spec"]["retries"] = 3
    rayjob["metadata"]["owner"] = "me"
    head_of(rayjob)["template"]["spec"]["containers"][0]["envFromm"] = []
    assert sorted(pruned_fields(rayjob, rayjob_schema())) == [
        "metadata.owner",
        "spec.rayClusterSpec.headGroupSpec.template.spec.containers[0].envFromm",
        "spec.retries",
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, {"workers": 1, "gpus": "1", "cpu": "8", "memory": "64Gi"}),
        (
            {"spec.resources.workers": 3, "spec.resources.gpusPerWorker": 4, "spec.resources.cpusPerWorker": 16,
             "spec.resources.memoryPerWorker": "200Gi", "spec.hyperparameters.batchSize": 48},
            {"workers": 3, "gpus": "4", "cpu": "16", "memory": "200Gi"},
        ),
        (
            {"spec.resources.gpusPerWorker": 0},
            {"workers": 1, "gpus": None, "cpu": "8", "memory": "64Gi"},
        ),
    ],
)  # fmt: skip
def test_worker_group_gets_the_requested_resources(overrides, expected) -> None:
    group = workers_of(build_rayjob(MakeJob.operator().set_all(overrides).typed(), SETTINGS))
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == expected["workers"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == expected["gpus"]
    assert (limits["cpu"], limits["memory"]) == (expected["cpu"], expected["memory"])


def test_head_runs_no_training_and_has_no_gpu() -> None:
    head = head_of(
        build_rayjob(MakeJob.operator().set("spec.resources.gpusPerWorker", 8).typed(), SETTINGS)
    )
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_contract_label_on_rayjob_and_every_pod_template() -> None:
    rayjob = build_rayjob(MakeJob.operator("my-job").typed(), SETTINGS)
    assert rayjob["metadata"]["labels"][naming.JOB_LABEL] == "my-job"
    for role, template in pod_templates(rayjob).items():
        assert template["metadata"]["labels"][naming.JOB_LABEL] == "my-job", role


def test_children_are_owned_by_the_job_and_named_from_it() -> None:
    job = MakeJob.operator("my-job").typed()
    for child, name in [
        (build_rayjob(job, SETTINGS), "my-job"),
        (build_configmap(job), "my-job-spec"),
    ]:
        assert child["metadata"]["name"] == name
        assert child["metadata"]["namespace"] == "team-a"
        (owner,) = child["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "finetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "my-job",
            "uid": job.metadata.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def test_builders_are_deterministic() -> None:
    job = (
        MakeJob.operator().set("spec.model.secretRef", {"name": "s"}).output("pvc://out/x").typed()
    )
    assert build_rayjob(job, SETTINGS) == build_rayjob(job, SETTINGS)
    assert build_configmap(job) == build_configmap(job)


def test_configmap_carries_the_whole_job_for_the_trainer() -> None:
    job = MakeJob.operator().set("spec.hyperparameters.learningRate", 1e-4).typed()
    document = yaml.safe_load(build_configmap(job).get("data")[naming.SPEC_KEY])
    assert document["apiVersion"] == "finetune.io/v1alpha1"
    assert document["kind"] == "FineTuneJob"
    assert document["metadata"] == {"name": "llama", "namespace": "team-a", "uid": job.metadata.uid}
    assert document["spec"]["hyperparameters"]["learningRate"] == 1e-4
    assert document["spec"] == job.spec.to_wire()


def test_spec_is_mounted_where_the_entrypoint_reads_it() -> None:
    rayjob = build_rayjob(MakeJob.operator().typed(), SETTINGS)
    assert rayjob["spec"]["entrypoint"] == "finetune run /etc/finetune/job.yaml"
    for role in ("head", "worker"):
        pod = pod_templates(rayjob)[role]["spec"]
        volume = next(v for v in pod["volumes"] if v.get("configMap"))
        assert volume["configMap"]["name"] == "llama-spec"
        mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == "/etc/finetune"


def test_pvc_sources_and_destination_become_volumes() -> None:
    job = (
        MakeJob.operator()
        .model("pvc://models/llama")
        .set("spec.dataset.train.source", "pvc://data/train.jsonl")
        .output("pvc://models/out")
        .typed()
    )
    for role in ("head", "worker"):
        pod = pod_templates(build_rayjob(job, SETTINGS))[role]["spec"]
        claims = {
            v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
            for v in pod["volumes"]
            if "persistentVolumeClaim" in v
        }
        assert claims == {"data": True, "models": False}  # written to: models holds the output
        container = pod["containers"][0]
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/mnt/pvc/data", "/mnt/pvc/models"} <= mounts
        assert {"name": "FINETUNE_PVC_ROOT", "value": "/mnt/pvc"} in container["env"]


def test_secret_reaches_trainer_only_as_env_from() -> None:
    rayjob = build_rayjob(
        MakeJob.operator().set("spec.model.secretRef", {"name": "hf-token"}).typed(), SETTINGS
    )
    templates = pod_templates(rayjob)
    for role in ("head", "worker"):
        container = templates[role]["spec"]["containers"][0]
        assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}]
    assert "envFrom" not in templates["submitter"]["spec"]["containers"][0]
    assert yaml.safe_dump(rayjob).count("hf-token") == 2


@pytest.mark.parametrize(
    ("overrides", "image"),
    [({}, "registry.local/trainer:1"), ({"spec.resources.image": "mine:3"}, "mine:3")],
)
def test_trainer_image_from_spec_else_settings(overrides, image) -> None:
    rayjob = build_rayjob(MakeJob.operator().set_all(overrides).typed(), SETTINGS)
    for template in pod_templates(rayjob).values():
        assert template["spec"]["containers"][0]["image"] == image


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({}, {"suspend": False, "backoffLimit": 2, "shutdownAfterJobFinishes": True}),
        (
            {"suspend": True, "backoffLimit": 5, "activeDeadlineSeconds": 600},
            {"suspend": True, "backoffLimit": 5, "activeDeadlineSeconds": 600},
        ),
    ],
)
def test_run_policy_reaches_the_rayjob(policy, expected) -> None:
    spec = build_rayjob(MakeJob.operator().set("spec.runPolicy", policy).typed(), SETTINGS)["spec"]
    assert {key: spec.get(key) for key in expected} == expected
    assert ("activeDeadlineSeconds" in spec) == ("activeDeadlineSeconds" in policy)


@pytest.mark.parametrize(("queue", "label"), [(None, None), ("team-a", "team-a")])
def test_kueue_label_only_when_queue_is_set(queue, label) -> None:
    policy = {"queueName": queue} if queue else {}
    rayjob = build_rayjob(MakeJob.operator().set("spec.runPolicy", policy).typed(), SETTINGS)
    assert rayjob["metadata"]["labels"].get(naming.QUEUE_LABEL) == label


def test_scheduling_fields_reach_the_pods() -> None:
    job = (
        MakeJob.operator()
        .set("spec.resources.nodeSelector", {"gpu": "h100"})
        .set("spec.resources.tolerations", [{"key": "gpu", "operator": "Exists"}])
        .set("spec.resources.priorityClassName", "high")
        .typed()
    )
    templates = pod_templates(build_rayjob(job, SETTINGS))
    worker = templates["worker"]["spec"]
    assert worker["nodeSelector"] == {"gpu": "h100"}
    assert worker["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    for template in templates.values():
        assert template["spec"]["priorityClassName"] == "high"
    assert "nodeSelector" not in templates["head"]["spec"]  # the head needs no GPU node


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_renders_a_rayjob_kuberay_accepts(path) -> None:
    job = load_job_file(path)
    job.metadata.namespace = job.metadata.namespace or "default"
    job.metadata.uid = "00000000-0000-0000-0000-000000000001"
    rayjob = build_rayjob(job, SETTINGS)
    assert schema_errors(rayjob) == []
    assert pruned_fields(rayjob, rayjob_schema()) == []


def test_head_serves_progress_on_the_settings_port_and_keeps_rays_ports() -> None:
    settings = Settings(trainer_image="registry.local/trainer:1", progress_port=9123)
    rayjob = build_rayjob(MakeJob.operator().typed(), settings)
    (head,) = head_of(rayjob)["template"]["spec"]["containers"]
    assert {"name": "FINETUNE_PROGRESS_PORT", "value": "9123"} in head["env"]
    ports = {port["name"]: port["containerPort"] for port in head["ports"]}
    # KubeRay's head service exposes the declared ports only, so Ray's own are declared too.
    assert ports == {"progress": 9123, "dashboard": 8265, "client": 10001, "gcs-server": 6379,
                     "metrics": 8080}  # fmt: skip
    (worker,) = workers_of(rayjob)["template"]["spec"]["containers"]
    assert "ports" not in worker
    assert all(env["name"] != "FINETUNE_PROGRESS_PORT" for env in worker["env"])
    assert schema_errors(rayjob) == [] and pruned_fields(rayjob, rayjob_schema()) == []


def test_head_tells_the_driver_the_operators_trainer_image_for_serving_manifests() -> None:
    settings = Settings(trainer_image="registry.local/trainer:7")
    rayjob = build_rayjob(MakeJob.operator().typed(), settings)
    (head,) = head_of(rayjob)["template"]["spec"]["containers"]
    assert {"name": "FINETUNE_TRAINER_IMAGE", "value": "registry.local/trainer:7"} in head["env"]
    assert schema_errors(rayjob) == [] and pruned_fields(rayjob, rayjob_schema()) == []
