"""Helpers for the operator's unit tests: KubeRay's own RayJob schema and what it prunes.

A module of its own (not conftest.py) so that tests can import it by a name no other test
directory uses.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.factories import SHARED

ROOT = Path(__file__).parents[3]
KUBERAY_FIXTURES = SHARED / "fixtures" / "kuberay-v1.7.0"


@functools.cache
def rayjob_schema() -> dict[str, Any]:
    # The CRD is large: the C loader reads it in a fraction of the pure-Python one's time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((KUBERAY_FIXTURES / "ray.io_rayjobs.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# The API server checks a custom object's metadata as ObjectMeta, not against the CRD schema.
OBJECT_META_FIELDS = {
    "name", "generateName", "namespace", "labels", "annotations", "ownerReferences",
    "finalizers", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields",
}  # fmt: skip


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths the API server would drop: fields a structural schema does not declare."""
    found: list[str] = []
    if path == "" and isinstance(value, dict):
        metadata = value.get("metadata") or {}
        found += [f"metadata.{key}" for key in metadata if key not in OBJECT_META_FIELDS]
        value = {key: child for key, child in value.items() if key != "metadata"}
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        keeps_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key, child in value.items():
            where = f"{path}.{key}" if path else key
            if key in properties:
                found += pruned_fields(child, properties[key], where)
            elif isinstance(extra, dict):
                found += pruned_fields(child, extra, where)
            elif not (extra is True or keeps_unknown):
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += pruned_fields(item, schema["items"], f"{path}[{index}]")
    return found


@functools.cache
def rayjob_validator() -> jsonschema.Draft4Validator:
    return jsonschema.Draft4Validator(rayjob_schema())


def schema_errors(rayjob: dict[str, Any]) -> list[str]:
    """jsonschema's complaints about a RayJob against KubeRay's CRD schema."""
    validator = rayjob_validator()
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(rayjob)
    ]
