"""Test data factories shared by every test directory (import as `tests.factories`)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# shared/ lives beside the checkout (../shared), or inside it on the GPU machine.
SHARED = next(
    (p for p in (REPO.parent / "shared", REPO / "shared") if p.is_dir()), REPO.parent / "shared"
)

VALID_JOB: dict[str, Any] = {
    "apiVersion": "finetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "demo", "namespace": "default"},
    "spec": {
        "model": {"source": "hf://meta-llama/Llama-3.1-8B"},
        "dataset": {"train": {"source": "s3://data/train.jsonl", "format": "messages"}},
        "output": {"destination": "s3://out/demo"},
    },
}


def set_path(obj: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested dicts, creating the dicts on the way."""
    *parents, leaf = dotted.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[leaf] = value


def make_job(**fields: Any) -> dict[str, Any]:
    """A valid FineTuneJob manifest; keyword `spec__dataset__packing=False` style overrides
    (`__` for nesting), or a dict via `make_job(**{"spec.x.y": value})`."""
    job = copy.deepcopy(VALID_JOB)
    for key, value in fields.items():
        set_path(job, key.replace("__", "."), value)
    return job
