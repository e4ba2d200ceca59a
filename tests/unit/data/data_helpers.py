"""Helpers for the data-stage tests: JSONL files and one data stage run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.factories import MakeJob

REPO_ROOT = Path(__file__).resolve().parents[3]


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
    spec = MakeJob.data_stage().spec(**overrides).typed_spec()
    return prepare_records(spec, base_dir=tmp_path)
