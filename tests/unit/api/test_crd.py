"""The generated CRD: fresh, structural, explainable, and valid as a Kubernetes object."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from finetune_operator import api, crd

from tests.factories import REPO


def schema() -> dict:
    return crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def all_nodes(node, path=""):
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from all_nodes(child, f"{path}.{name}")
    if "items" in node:
        yield from all_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from all_nodes(node["additionalProperties"], f"{path}.*")


def test_checked_in_crd_is_fresh():
    for path in crd.OUTPUT_PATHS:
        assert (REPO / path).read_text() == crd.render(), f"{path} is stale: run make generate"


def test_schema_is_structural():
    assert crd.structural_problems(schema()) == []


UNTYPED = (
    ".spec.hyperparameters.gradientCheckpointing",
    ".spec.sweep.searchSpace.*.choice[]",
    ".status.progress.sweep.best.hyperparameters.*",
)


def test_every_node_has_a_type_and_no_json_schema_leftovers():
    text = crd.render()
    for leftover in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "title:", "const:"):
        assert leftover not in text
    for path, node in all_nodes(schema()):
        # The untyped fields: true, false or "auto"; a sweep's choice values (numbers, or
        # strings for lrScheduler) and the best trial's values. CEL rules check the spec's.
        assert "type" in node or path in UNTYPED, path


@pytest.mark.parametrize(
    ("bad", "complaint"),
    [
        ({"properties": {"a": {"type": "string"}}}, "<root>: no type"),
        (
            {"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}]}}},
            ".a: keyword 'anyOf'",
        ),
        ({"type": "object", "title": "x"}, "<root>: keyword 'title'"),
        ({"type": "object", "properties": {"a": {"$ref": "#/x"}}}, ".a: keyword '$ref'"),
        (
            {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "additionalProperties beside properties",
        ),
        ({"type": "array", "items": {"description": "untyped"}}, "[]: no type"),
        ({"type": "integer", "default": None}, "null default"),
    ],
)
def test_structural_checker_catches_violations(bad, complaint):
    problems = crd.structural_problems(bad)
    assert any(complaint in p for p in problems), problems


def test_optional_fields_are_nullable_not_unions():
    spec = schema()["properties"]["spec"]["properties"]
    assert spec["hyperparameters"]["properties"]["maxSteps"]["nullable"] is True
    assert spec["dataset"]["properties"]["validation"]["nullable"] is True
    assert "nullable" not in spec["dataset"]["properties"]["train"]


def test_every_spec_field_is_described_for_kubectl_explain():
    spec = schema()["properties"]["spec"]
    # kubectl explain shows a list's or map's own description for its items.
    undescribed = [
        path
        for path, node in all_nodes(spec, ".spec")
        if not node.get("description") and not path.endswith(("[]", ".*"))
    ]
    assert undescribed == []


def test_defaults_and_bounds_reach_the_schema():
    spec = schema()["properties"]["spec"]["properties"]
    hyper = spec["hyperparameters"]["properties"]
    assert hyper["learningRate"]["default"] == 2.0e-4
    assert (
        hyper["learningRate"]["minimum"] == 0 and hyper["learningRate"]["exclusiveMinimum"] is True
    )
    assert spec["resources"]["properties"]["workers"]["minimum"] == 1
    assert spec["method"]["properties"]["type"]["enum"] == ["lora", "qlora", "full"]
    assert spec["method"]["default"] == {}  # nested defaults filled by the API server
    assert schema()["required"] == ["spec"]
    assert set(spec) >= {"model", "dataset", "method", "hyperparameters", "evaluation",
                         "deepspeed", "resources", "checkpointing", "output", "runPolicy"}  # fmt: skip


def test_names_printer_columns_and_status_subresource():
    document = crd.crd()
    names = document["spec"]["names"]
    assert document["metadata"]["name"] == "finetunejobs.finetune.io"
    assert names["shortNames"] == ["ftj"] and names["categories"] == ["finetune"]
    version = document["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Progress", "Loss", "ETA", "Age"]


def test_cel_rules_are_on_the_schema():
    root = schema()
    assert root["x-kubernetes-validations"] == api.ROOT_VALIDATIONS
    spec = root["properties"]["spec"]
    assert any("qlora" in r["rule"] for r in spec["x-kubernetes-validations"])
    dataset = spec["properties"]["dataset"]
    assert any("testSplit" in r["rule"] for r in dataset["x-kubernetes-validations"])


def test_crd_is_a_valid_kubernetes_object():
    document = yaml.safe_load((REPO / crd.CRD_PATH).read_text())
    kubernetes_validate.validate(document, "1.33.0", strict=True)
