"""Training in this process, without Ray: one rank's Worker, and plain optimizer steps on
an engine, for trainer tests that need real steps but no cluster (the tests' fixture
`single_process_group` gives torch.distributed its one gloo rank)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from finetune_trainer import loop
from finetune_trainer.batches import micro_batches_for_step
from finetune_trainer.prefetch import collate_step
from finetune_trainer.train_step import optimizer_step


def worker_without_ray(
    spec: Any, rows: dict[str, Any], *, base_dir: Path, total_steps: int, steps_per_epoch: int,
    output_dir: Path,
) -> loop.Worker:  # fmt: skip
    """Rank 0 of 1 on the CPU, built as Ray Train's worker builds it, with no tracker."""
    setup = loop.WorkerSetup(
        spec=spec, base_dir=base_dir, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        data=None, tracker=None, output_dir=output_dir,
    )  # fmt: skip
    return loop.Worker.build(setup, rows, rank=0, world=1, device=torch.device("cpu"))


def train_steps(
    spec: Any, splits: Any, engine: Any, steps: int, pad: int, *, dtype: torch.dtype = torch.float32
) -> list[float]:
    """`steps` optimizer steps in order, each collated just before it (no prefetch thread),
    global batch 4 in micro batches of 2; the steps' mean token losses."""
    losses = []
    for step in range(steps):
        micro = step_micro_batches(spec, splits, step, global_batch=4, micro=2)
        host = collate_step(micro, pad, dtype, pin=False)
        loss, tokens, loss_tokens = optimizer_step(engine, host, torch.device("cpu"))
        assert tokens.item() > loss_tokens.item() > 0
        losses.append(loss.item())
    return losses


def step_micro_batches(spec: Any, splits: Any, step: int, *, global_batch: int, micro: int) -> Any:
    """The training split's micro batches of `step` for rank 0 of 1, as the loop draws them."""
    return micro_batches_for_step(
        splits.rows["train"], step, seed=spec.hyperparameters.seed,
        steps_per_epoch=splits.steps_per_epoch, global_batch=global_batch, micro=micro, rank=0,
        world_size=1,
    )  # fmt: skip
