"""Shared builders for the trainer tests: a learnable chat dataset and job manifests."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import yaml

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "car", "house", "bird", "cat", "dog", "boat", "lamp", "chair", "book"]


def write_chat_data(path: Path, records: int, *, seed: int = 0) -> Path:
    """Distinct templated question/answer pairs in messages format (easy to learn)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    lines = []
    while len(lines) < records:
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        colour, thing = rng.choice(COLOURS), rng.choice(THINGS)
        if rng.random() < 0.5:
            question, answer = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        else:
            question = f"The {thing} is {colour}. What colour is the {thing}?"
            answer = f"The {thing} is {colour}."
        if question in seen:
            continue
        seen.add(question)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


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


def write_job(folder: Path, manifest: dict[str, Any], name: str = "job.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path
