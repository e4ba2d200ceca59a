"""history.jsonl: one JSON object per logged step, cut back when a run resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune_trainer.tracker import TrackerState

HISTORY = "history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def truncate_history(path: Path, after_step: int) -> int:
    """Drop rows past the checkpoint a run resumes from: those steps are trained again.
    Returns the last step kept (-1 for none)."""
    kept = [row for row in read_history(path) if row["step"] <= after_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")
    return max((row["step"] for row in kept), default=-1)


def append_history(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


class HistoryLog:
    """history.jsonl as a run's driver writes it from the tracker's rows: cut back when an
    attempt resumes, and given only rows past its last step. A resumed attempt sends again
    the rows its checkpoint carries (checkpoints.TrainerState.recent_rows), for a driver
    killed after the checkpoint was saved but before it wrote them; rows already here are
    not written twice."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_step = -1
        self.attempts_seen = 0

    def take(self, state: TrackerState) -> list[dict[str, Any]]:
        """One poll of the tracker: a new attempt first cuts history back to where it
        resumed (from step 0, a first or --fresh run, that includes the baseline evaluation
        at step 0, trained again); then the rows past the last step are written and
        returned."""
        if state.resumed_at is not None and state.attempts > self.attempts_seen:
            self.attempts_seen = state.attempts
            self.resumed(state.resumed_at or -1)
        return self.append(state.rows)

    def resumed(self, at_step: int) -> None:
        """An attempt starts at `at_step`: the rows past it are trained again."""
        self.last_step = truncate_history(self.path, at_step)

    def append(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write the rows past the last step; returns them (what is new to show)."""
        new = [row for row in rows if row["step"] > self.last_step]
        append_history(self.path, new)
        if new:
            self.last_step = new[-1]["step"]
        return new
