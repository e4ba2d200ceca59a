"""history.jsonl: one JSON object per logged step, cut back when a run resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HISTORY = "history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def truncate_history(path: Path, after_step: int) -> None:
    """Drop rows past the checkpoint a run resumes from: those steps are trained again."""
    kept = [row for row in read_history(path) if row["step"] <= after_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")


def append_history(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
