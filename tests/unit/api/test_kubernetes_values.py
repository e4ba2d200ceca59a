"""Values Kubernetes itself would refuse are refused by `finetune validate` and at admission.

Each row changes a valid job; `finetune validate` must print one line naming the field and
what is allowed. The schema and CEL rows check the generated CRD alone, as the API server
would apply it, so a manifest applied with kubectl is refused the same way.
"""

from __future__ import annotations

import pytest
import yaml
from finetune_operator import kube_values, validation
from finetune_operator.validation import validate_file

from tests.factories import MakeJob

RESOURCES = "spec.resources"
TOLERATION = f"{RESOURCES}.tolerations[0]"

# (dotted field -> value, the path reported, a fragment of the reason)
REFUSED = [
    # Kueue's queue name becomes a label value.
    ({"spec.runPolicy.queueName": "gpu a100"}, "spec.runPolicy.queueName", "label value"),
    ({"spec.runPolicy.queueName": "-gpu"}, "spec.runPolicy.queueName", "label value"),
    ({"spec.runPolicy.queueName": "q" * 64}, "spec.runPolicy.queueName", "at most 63"),
    ({"spec.runPolicy.queueName": ""}, "spec.runPolicy.queueName", "at least 1"),
    # nodeSelector: keys are label keys, values label values.
    ({f"{RESOURCES}.nodeSelector": {"gpu type": "a100"}}, f"{RESOURCES}.nodeSelector", "label key"),
    ({f"{RESOURCES}.nodeSelector": {"Example.com/gpu": "a100"}}, f"{RESOURCES}.nodeSelector", "label key"),
    ({f"{RESOURCES}.nodeSelector": {"a/b/c": "x"}}, f"{RESOURCES}.nodeSelector", "label key"),
    ({f"{RESOURCES}.nodeSelector": {"k" * 64: "x"}}, f"{RESOURCES}.nodeSelector", "label key"),
    ({f"{RESOURCES}.nodeSelector": {"p" * 254 + "/gpu": "x"}}, f"{RESOURCES}.nodeSelector", "at most 253"),
    ({f"{RESOURCES}.nodeSelector": {"gpu": "A100 80GB"}}, f"{RESOURCES}.nodeSelector.gpu", "label value"),
    ({f"{RESOURCES}.nodeSelector": {"gpu": "v" * 64}}, f"{RESOURCES}.nodeSelector.gpu", "at most 63"),
    # DNS names.
    ({"metadata.namespace": "Team_A"}, "metadata.namespace", "DNS-1123 label"),
    ({"metadata.namespace": "n" * 64}, "metadata.namespace", "at most 63"),
    ({f"{RESOURCES}.priorityClassName": "High Priority"}, f"{RESOURCES}.priorityClassName", "object name"),
    ({"spec.model.secretRef": {"name": "-token"}}, "spec.model.secretRef.name", "object name"),
    ({"spec.model.secretRef": {"name": "hf..token"}}, "spec.model.secretRef.name", "object name"),
    # Image references.
    ({f"{RESOURCES}.image": "ghcr.io/Acme/trainer:1.0"}, f"{RESOURCES}.image", "image reference"),
    ({f"{RESOURCES}.image": "trainer image:1.0"}, f"{RESOURCES}.image", "image reference"),
    ({f"{RESOURCES}.image": "trainer:"}, f"{RESOURCES}.image", "image reference"),
    ({f"{RESOURCES}.image": "trainer@sha256:abc"}, f"{RESOURCES}.image", "image reference"),
    ({f"{RESOURCES}.image": ""}, f"{RESOURCES}.image", "image reference"),
    # Toleration shapes.
    ({f"{RESOURCES}.tolerations": [{"operator": "Exists", "key": "gpu", "value": "x"}]}, TOLERATION, "Exists"),
    ({f"{RESOURCES}.tolerations": [{"key": "gpu", "effect": "NoSchedule", "tolerationSeconds": 60}]}, TOLERATION, "NoExecute"),
    ({f"{RESOURCES}.tolerations": [{"value": "x"}]}, TOLERATION, "key is required"),
    ({f"{RESOURCES}.tolerations": [{"key": "gpu", "effect": "NoEvict"}]}, f"{TOLERATION}.effect", "NoExecute"),
    ({f"{RESOURCES}.tolerations": [{"key": "bad key"}]}, f"{TOLERATION}.key", "label key"),
    ({f"{RESOURCES}.tolerations": [{"key": "gpu", "value": "a b"}]}, f"{TOLERATION}.value", "label value"),
    # Nothing to run on.
    ({f"{RESOURCES}.memoryPerWorker": "0"}, f"{RESOURCES}.memoryPerWorker", "more than zero"),
    ({f"{RESOURCES}.memoryPerWorker": "0Gi"}, f"{RESOURCES}.memoryPerWorker", "more than zero"),
    ({f"{RESOURCES}.memoryPerWorker": "0.0Mi"}, f"{RESOURCES}.memoryPerWorker", "more than zero"),
    ({f"{RESOURCES}.cpusPerWorker": 0}, f"{RESOURCES}.cpusPerWorker", "greater than or equal to 1"),
    # list-type set fields: the API server refuses duplicates.
    ({"spec.method.lora.targetModules": ["q_proj", "v_proj", "q_proj"]}, "spec.method.lora.targetModules", "'q_proj' more than once"),
    ({"spec.evaluation.metrics": ["loss", "loss"]}, "spec.evaluation.metrics", "'loss' more than once"),
]  # fmt: skip

ACCEPTED = [
    {"spec.runPolicy.queueName": "gpu-a100.team_a"},
    {f"{RESOURCES}.nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}},
    {f"{RESOURCES}.nodeSelector": {"kubernetes.io/arch": "", "Zone_1": "eu.west-1"}},
    {"metadata.namespace": "team-a"},
    {f"{RESOURCES}.priorityClassName": "high.priority-1"},
    {f"{RESOURCES}.image": "trainer"},
    {f"{RESOURCES}.image": "localhost:5000/ml/trainer:v1.2_rc-3"},
    {f"{RESOURCES}.image": "Registry.Example.com/ml/fine__tune-trainer"},
    {f"{RESOURCES}.image": "ghcr.io/acme/trainer:1.0@sha256:" + "a" * 64},
    {f"{RESOURCES}.tolerations": [{"operator": "Exists"}]},
    {f"{RESOURCES}.tolerations": [{"operator": "Exists", "effect": "NoSchedule"}]},
    {f"{RESOURCES}.tolerations": [{"key": "gpu", "value": "", "effect": ""}]},
    {f"{RESOURCES}.tolerations": [{"key": "example.com/gpu", "effect": "NoExecute", "tolerationSeconds": 30}]},
    {f"{RESOURCES}.memoryPerWorker": "0.5Gi"},
    {"spec.method.lora.targetModules": ["q_proj", "v_proj"]},
]  # fmt: skip


def job_with(changes: dict) -> dict:
    return MakeJob().set_all(changes).obj()


def validate(tmp_path, job: dict) -> list[str]:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    return [line.removeprefix(f"{manifest}: ") for line in validate_file(manifest)]


@pytest.mark.parametrize(("changes", "path", "reason"), REFUSED, ids=[r[2] for r in REFUSED])
def test_finetune_validate_refuses_what_kubernetes_refuses(tmp_path, changes, path, reason):
    lines = validate(tmp_path, job_with(changes))
    matching = [line for line in lines if line.startswith(f"{path}: ")]
    assert matching, f"no line for {path}; got {lines}"
    assert any(reason in line for line in matching), matching


@pytest.mark.parametrize("changes", ACCEPTED, ids=lambda c: str(next(iter(c.values()))))
def test_values_kubernetes_accepts_stay_valid(tmp_path, changes):
    assert validate(tmp_path, job_with(changes)) == []


# The same refusals from the CRD alone: what the API server applies to `kubectl apply`.
# nodeSelector keys are the exception (see ResourcesSpec._label_keys): the models refuse them.
ADMISSION_REFUSED = [
    {"spec.runPolicy.queueName": "gpu a100"},
    {f"{RESOURCES}.nodeSelector": {"gpu": "A100 80GB"}},
    {f"{RESOURCES}.priorityClassName": "High Priority"},
    {f"{RESOURCES}.image": "ghcr.io/Acme/trainer"},
    {f"{RESOURCES}.tolerations": [{"operator": "Exists", "key": "gpu", "value": "x"}]},
    {f"{RESOURCES}.tolerations": [{"key": "gpu", "tolerationSeconds": 60}]},
    {f"{RESOURCES}.tolerations": [{"value": "x"}]},
    {f"{RESOURCES}.tolerations": [{"key": "bad key"}]},
    {f"{RESOURCES}.memoryPerWorker": "0Gi"},
]


@pytest.mark.parametrize("changes", ADMISSION_REFUSED, ids=lambda c: str(next(iter(c.values()))))
def test_the_crd_alone_refuses_it(changes):
    job = job_with(changes)
    schema_errors = list(validation._admission_validator().iter_errors(job))
    rule_problems = validation.cel_problems(job) if not schema_errors else []
    assert schema_errors or rule_problems, f"the CRD admitted {changes}"


def test_set_fields_are_list_type_set_in_the_crd():
    spec = validation._crd_schema()["properties"]["spec"]["properties"]
    lora = spec["method"]["properties"]["lora"]["properties"]
    assert lora["targetModules"]["x-kubernetes-list-type"] == "set"
    assert spec["evaluation"]["properties"]["metrics"]["x-kubernetes-list-type"] == "set"


def test_a_set_field_names_the_duplicate_once():
    job = job_with({"spec.method.lora.targetModules": ["q_proj", "q_proj", "q_proj"]})
    problems = validation.validate_object(job)
    assert [p.path for p in problems] == ["spec.method.lora.targetModules"]
    assert problems[0].message.startswith("lists 'q_proj' more than once; list each item once")


def test_label_patterns_are_the_crds():
    resources = validation._crd_schema()["properties"]["spec"]["properties"]["resources"]
    node_selector = resources["properties"]["nodeSelector"]
    assert node_selector["additionalProperties"]["pattern"] == kube_values.LABEL_VALUE
