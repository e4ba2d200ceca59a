"""Job manifests for the trainer tests."""

from __future__ import annotations

import copy
from typing import Any

BASE_JOB: dict[str, Any] = {
    "apiVersion": "finetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tiny", "namespace": "default"},
    "spec": {
        "model": {"source": "model"},
        "dataset": {
            "train": {"source": "train.jsonl", "format": "messages"},
            "validationSplit": 0.1,
            "testSplit": 0.05,
            "maxSeqLength": 128,
            "cleaning": {"redactPII": False},
        },
        "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "hyperparameters": {
            "maxSteps": 4,
            "batchSize": 4,
            "learningRate": 5.0e-3,
            "warmupRatio": 0.0,
            "gradientCheckpointing": False,
        },
        "evaluation": {"everySteps": 2, "maxGenerationSamples": 4},
        "deepspeed": {"zeroStage": 2},
        "resources": {"workers": 2, "gpusPerWorker": 0, "cpusPerWorker": 1},
        "checkpointing": {"everySteps": 2, "keep": 2},
        "output": {"destination": "out"},
    },
}


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def make_manifest(**spec_overrides: Any) -> dict[str, Any]:
    """BASE_JOB with `spec_overrides` deep-merged into its spec."""
    return deep_merge(BASE_JOB, {"spec": spec_overrides})
