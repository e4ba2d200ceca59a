"""Resumable checkpoints through Ray Train: every rank saves its DeepSpeed shards and reports.

A checkpoint folder holds DeepSpeed's engine state under `engine/` (module, optimizer and
scheduler shards, one file per rank), `trainer_state.json` (step, epoch, early
stopping) and `complete/`, one marker per rank written after its upload, which lets a
retry resume from a checkpoint Ray Train had not yet recorded (see resume_point).
The data order is a pure function of (seed, epoch), so the step is all the
data-order state there is.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer import resume_point
from finetune_trainer.resume_point import checkpoint_dir_name

ENGINE_DIR = "engine"
ENGINE_TAG = "state"
STATE_FILE = "trainer_state.json"
# Under early stopping, Ray Train ranks checkpoints by this reported metric (lower is
# better); one saved off an evaluation scores UNSCORED and goes first (the newest stays).
SCORE = "validation_loss"
UNSCORED = 1e30


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps done
    early_stopping: dict[str, float] | None = None
    stopped_early: bool = False
    # With early stopping: the trained step with the lowest validation loss so far and its
    # validation scores; its checkpoint is kept, and the outputs hold its weights.
    best_step: int | None = None
    best_validation: dict[str, float] | None = None
    # The base model's loss on each retention set, measured before the first step when
    # training changes the base itself (full fine-tuning): kept for a resumed run.
    retention_before: dict[str, dict[str, float]] | None = None
    # The history rows sent since the previous checkpoint, up to this one (rank 0's): a
    # driver killed after this checkpoint was saved but before it wrote them down gets them
    # back from the attempt that resumes here (history.HistoryLog).
    recent_rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))


@dataclass(frozen=True)
class Attempt:
    """This rank within this attempt of the run, as the completion markers record it."""

    rank: int
    world: int
    token: str  # the same on every rank of one attempt (broadcast by rank 0)


def this_attempt(rank: int, world: int) -> Attempt:
    """Collective: a token rank 0 draws for this attempt, shared with every rank."""
    import torch.distributed as dist

    token: list[str | None] = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    return Attempt(rank=rank, world=world, token=str(token[0]))


def save_and_report(
    engine: Any, state: TrainerState, metrics: dict[str, Any], *, attempt: Attempt
) -> None:
    """Collective: every rank writes its shards and reports them into one checkpoint folder,
    then marks its part complete (see resume_point)."""
    import ray.train

    name = checkpoint_dir_name(state.step)
    with tempfile.TemporaryDirectory(prefix="finetune-ckpt-") as tmp:
        engine.save_checkpoint(str(Path(tmp) / ENGINE_DIR), tag=ENGINE_TAG)
        if attempt.rank == 0:
            (Path(tmp) / STATE_FILE).write_text(state.to_json())
        files = resume_point.files_of(Path(tmp))
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name
        )
    # report() returns once this rank's upload is done (CheckpointUploadMode.SYNC).
    marker = resume_point.Marker(
        rank=attempt.rank, world=attempt.world, attempt=attempt.token, files=files
    )
    run_storage().write_marker(name, marker)


def run_storage() -> resume_point.RunStorage:
    """This run's folder, through the filesystem Ray Train persists checkpoints with."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    return resume_point.RunStorage(storage.storage_filesystem, storage.experiment_fs_path)


def resume_checkpoint(*, rank: int) -> tuple[Any, bool]:
    """The checkpoint to resume from (None for none) and whether Ray never recorded it.

    Rank 0 decides and broadcasts, so that every rank loads the same step."""
    import ray.train
    import torch.distributed as dist

    recorded = ray.train.get_checkpoint()
    decision: list[int | None] = [None]
    run = run_storage()
    if rank == 0:
        recorded_step = None if recorded is None else resume_point.step_of(recorded.path)
        decision[0] = resume_point.unrecorded_resume_step(run, recorded_step)
    dist.broadcast_object_list(decision, src=0)
    step = decision[0]
    if step is None:
        return recorded, False
    path = run.folder(checkpoint_dir_name(step))
    return ray.train.Checkpoint(path=path, filesystem=run.fs), True


def restore_latest(engine: Any, *, rank: int) -> tuple[TrainerState | None, bool]:
    """Load the newest complete checkpoint of this run into `engine`: its state (None when
    there is none) and whether it came from a folder Ray Train never recorded."""
    checkpoint, unrecorded = resume_checkpoint(rank=rank)
    if checkpoint is None:
        return None, False
    with checkpoint.as_directory() as folder:
        load_engine(engine, Path(folder), weights_only=False)
        return TrainerState.from_json((Path(folder) / STATE_FILE).read_text()), unrecorded


def load_weights(engine: Any, step: int) -> None:
    """Collective: the weights of this run's checkpoint at `step` into `engine`, without its
    optimizer or scheduler state (training is over)."""
    import ray.train

    run = run_storage()
    checkpoint = ray.train.Checkpoint(path=run.folder(checkpoint_dir_name(step)), filesystem=run.fs)
    with checkpoint.as_directory() as folder:
        load_engine(engine, Path(folder), weights_only=True)


def load_engine(engine: Any, folder: Path, *, weights_only: bool) -> None:
    """What `engine` saved into a checkpoint folder: everything a resume needs (weights,
    optimizer and scheduler state), or with `weights_only` the weights alone."""
    engine.load_checkpoint(
        str(folder / ENGINE_DIR),
        tag=ENGINE_TAG,
        load_module_only=weights_only,
        load_optimizer_states=not weights_only,
        load_lr_scheduler_states=not weights_only,
    )
