"""Generate the FineTuneJob CRD from the pydantic models (our controller-gen).

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3 schema:
every node typed, no $ref, no anyOf/oneOf/allOf, `nullable` instead of a null branch,
no titles, and no `additionalProperties` beside `properties`. `to_structural` does
that translation and `structural_problems` checks the result (tests and `make verify`).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import to_jsonable_python

from finetune_operator import api
from finetune_operator.generated import write_or_check

CRD_PATH = Path("crds") / f"{api.GROUP}_{api.PLURAL}.yaml"
# Helm installs what is in a chart's crds/ before its templates; the chart ships the same file.
OUTPUT_PATHS = (CRD_PATH, Path("charts/finetune-operator/crds") / CRD_PATH.name)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
HEADER = "# Generated from operator/finetune_operator/api.py by `make generate`. Do not edit.\n"

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progress.display"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss"},
    {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
    {"name": "RayJob", "type": "string", "jsonPath": ".status.rayJobName", "priority": 1},
    {
        "name": "Trials",
        "type": "string",
        "jsonPath": ".status.progress.sweep.display",
        "priority": 1,
    },
    # -o wide: True once a retention set's loss rose past evaluation.maxRetentionLossIncrease.
    {
        "name": "Retention-Regressed",
        "type": "string",
        "priority": 1,
        "jsonPath": '.status.conditions[?(@.type=="RetentionRegressed")].status',
    },
]

# JSON Schema keywords a structural schema may carry (besides the x-kubernetes-* ones).
ALLOWED_KEYWORDS = {
    "type", "description", "properties", "items", "required", "additionalProperties",
    "enum", "default", "nullable", "format", "pattern", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
    "maxItems", "minProperties", "maxProperties", "x-kubernetes-validations",
    "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string", "x-kubernetes-map-type",
}  # fmt: skip


class _SchemaWithFactoryDefaults(GenerateJsonSchema):
    """pydantic leaves `default_factory` defaults out of the schema; the API server needs
    them so that defaulted objects (and the CEL rules reading them) see every field."""

    def get_default_value(self, schema: Any) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return to_jsonable_python(factory(), by_alias=True)
        return schema.get("default", NoDefault)


def to_structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Translate one pydantic JSON-schema node (and its children) into a structural node."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**target, **node}  # the property's own description wins over the class's
    branches = node.pop("anyOf", None)
    if branches is not None:
        non_null = [b for b in branches if b.get("type") != "null"]
        if len(non_null) != 1:
            raise ValueError(f"cannot express a union of {len(non_null)} types structurally")
        node = {**non_null[0], **node, "nullable": True}
        return to_structural(node, defs)
    node.pop("title", None)
    node.pop("$defs", None)
    if "const" in node:
        node["enum"] = [node.pop("const")]
        node.setdefault("type", "string")
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    # JSON Schema 2020's numeric exclusive bounds are OpenAPI v3.0's boolean flags.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if exclusive in node and not isinstance(node[exclusive], bool):
            node[bound] = node.pop(exclusive)
            node[exclusive] = True
    if node.get("type") == "integer":
        # Kubernetes stores integers as int64; larger ones overflow every reader of the spec.
        node.setdefault("format", "int64")
        node.setdefault("minimum", INT64_MIN)
        node.setdefault("maximum", INT64_MAX)
    if "properties" in node:
        node["properties"] = {k: to_structural(v, defs) for k, v in node["properties"].items()}
        node["type"] = "object"
        # extra="forbid" becomes additionalProperties: false, which a structural schema
        # may not carry next to properties; unknown fields are pruned (or refused by
        # kubectl's strict field validation) instead.
        node.pop("additionalProperties", None)
    elif isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = to_structural(node["additionalProperties"], defs)
    if "items" in node:
        node["items"] = to_structural(node["items"], defs)
    if node.get("type") == "object" and isinstance(node.get("default"), dict):
        # An empty default lets the API server fill the nested fields' own defaults,
        # so `kubectl get -o yaml` shows the effective spec.
        node["default"] = {}
    if "default" in node and node["default"] is None:
        del node["default"]
    return node


def openapi_schema() -> dict[str, Any]:
    """The FineTuneJob's openAPIV3Schema."""
    raw = api.FineTuneJob.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_SchemaWithFactoryDefaults
    )
    defs = raw.get("$defs", {})
    root = to_structural(raw, defs)
    root["properties"]["metadata"] = {"type": "object"}
    root["properties"]["apiVersion"] = {
        "type": "string",
        "description": "finetune.io/v1alpha1",
    }
    root["properties"]["kind"] = {"type": "string", "description": "FineTuneJob"}
    root["description"] = (
        "FineTuneJob fine-tunes a large language model (LoRA, QLoRA or full) with Ray Train "
        "and DeepSpeed on a KubeRay cluster, and reports its progress in status."
    )
    root["required"] = ["spec"]
    root["x-kubernetes-validations"] = copy.deepcopy(api.ROOT_VALIDATIONS)
    return root


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.KIND.lower(),
                "shortNames": ["ftj"],
                "categories": ["finetune"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": openapi_schema()},
                }
            ],
        },
    }


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-schemas out in full: anchors would puzzle readers of the CRD."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    return HEADER + yaml.dump(crd(), Dumper=_NoAliasDumper, sort_keys=False, width=100)


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Why `node` is not a structural schema; empty when it is."""
    if not isinstance(node, dict):
        return [f"{path or '<root>'}: schema node is not an object"]
    where = path or "<root>"
    problems = [
        f"{where}: keyword {key!r} not allowed" for key in node if key not in ALLOWED_KEYWORDS
    ]
    if "type" not in node and not (
        node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")
    ):
        problems.append(f"{where}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: additionalProperties beside properties")
    if "nullable" in node and not isinstance(node["nullable"], bool):
        problems.append(f"{where}: nullable must be a boolean")
    if "default" in node and node["default"] is None:
        problems.append(f"{where}: null default")
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune_operator.crd [--check]`: write the CRDs, or check they are fresh."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    problems = structural_problems(crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return write_or_check(text, OUTPUT_PATHS, check="--check" in args)


if __name__ == "__main__":
    raise SystemExit(main())
