"""Helpers for the data-stage tests: job manifests, JSONL files, one data stage run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from finetune_operator import api
from finetune_operator.validation import parse_job

REPO_ROOT = Path(__file__).resolve().parents[3]


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base


def make_job(**overrides: Any) -> dict[str, Any]:
    """A valid FineTuneJob manifest; keyword arguments deep-merge into spec (camelCase)."""
    job = {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": "data-test"},
        "spec": {
            "model": {"source": "./model"},
            "dataset": {"train": {"source": "train.jsonl", "format": "messages"}},
            "output": {"destination": "./out"},
        },
    }
    _merge(job["spec"], copy.deepcopy(overrides))
    return job


def make_spec(**overrides: Any) -> api.FineTuneJobSpec:
    """The typed spec of make_job(**overrides), validated like `finetune validate` does."""
    return parse_job(make_job(**overrides)).spec


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """Records as JSONL; a str item is written verbatim (to plant malformed lines)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prepare_in(tmp_path: Path, train: list[Any], **overrides: Any):
    """Write train.jsonl under tmp_path and run the data stage of a job using it."""
    from finetune_trainer.data import prepare_records

    write_jsonl(tmp_path / "train.jsonl", train)
    return prepare_records(make_spec(**overrides), base_dir=tmp_path)
