"""Resumable checkpoints through Ray Train: every rank saves its DeepSpeed shards and reports.

A checkpoint folder holds DeepSpeed's engine state under `engine/` (module, optimizer and
scheduler shards, one file per rank) and `trainer_state.json` (step, epoch, early
stopping). The data order is a pure function of (seed, epoch), so the step is all the
data-order state there is.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINE_DIR = "engine"
ENGINE_TAG = "state"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    early_stopping: dict[str, float] | None = None
    stopped_early: bool = False

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_step_{step:08d}"


def save_and_report(
    engine: Any, state: TrainerState, metrics: dict[str, Any], *, rank: int
) -> None:
    """Collective: every rank writes its shards and reports them into one checkpoint folder."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="finetune-ckpt-") as tmp:
        engine.save_checkpoint(str(Path(tmp) / ENGINE_DIR), tag=ENGINE_TAG)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(state.to_json())
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=checkpoint_dir_name(state.step),
        )


def restore_latest(engine: Any) -> TrainerState | None:
    """Load the newest reported checkpoint of this run into `engine`; None when there is none."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        engine.load_checkpoint(
            str(Path(folder) / ENGINE_DIR),
            tag=ENGINE_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        return TrainerState.from_json((Path(folder) / STATE_FILE).read_text())
