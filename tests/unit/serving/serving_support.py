"""Helpers for the serving tests: KServe v0.20.0's own InferenceService schema, and outputs.

A module of its own (not conftest.py) so that tests can import it by a name no other test
directory uses.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.factories import SHARED

KSERVE_CRD = SHARED / "fixtures" / "kserve-v0.20.0" / "serving.kserve.io_inferenceservices.yaml"


@functools.cache
def inference_service_schema() -> dict[str, Any]:
    # 2 MB of YAML: the C loader reads it in a fraction of the pure-Python one's time.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(KSERVE_CRD.read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def kserve_schema_errors(service: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(inference_service_schema())
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(service)
    ]


def write_output(
    folder: Path, *, adapter: bool = False, model: bool = False, rank: int = 8
) -> Path:
    """An output folder as a run leaves it: adapter/ and/or model/ with their configs."""
    if adapter:
        (folder / "adapter").mkdir(parents=True)
        config = {"peft_type": "LORA", "r": rank, "base_model_name_or_path": "/tmp/base"}
        (folder / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    if model:
        (folder / "model").mkdir(parents=True)
        (folder / "model" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
