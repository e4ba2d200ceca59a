"""Whether a run stops after its current step, with the same answer on every rank.

Three things can stop it:
- the test hook, which every rank knows (`WorkerSetup.stop_at_step`);
- a request from the driver (Ctrl-C, or a sweep's scheduler), which rank 0 learns as its
  reporter sends rows;
- in a sweep under a scheduler, the scheduler's answer to this step's evaluation. Rank 0
  waits for it, so that a trial stopped at a rung trains no further.

Rank 0's flag then reaches the other ranks through a host-side broadcast.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from finetune_trainer import tracker
from finetune_trainer.reporter import BackgroundReporter, PendingRow


def rank0_asks_to_stop(
    reporter: BackgroundReporter, row: PendingRow, *, step: int, metric: str | None,
    total_steps: int, progress: Any,
) -> bool:  # fmt: skip
    """Rank 0, after submitting `row`: the scheduler's answer at a ranked evaluation (the
    row flushed first, since the trial's driver must see it to report it), else whether
    the driver has asked the run to stop."""
    if tracker.is_ranked_evaluation(step, row.values, metric, total_steps):
        reporter.flush()
        if tracker.wait_for_answer(progress, step):
            return True
    return reporter.stop_requested.is_set()


def agree(flag: bool, world: int, group: Any = None) -> bool:
    """Rank 0's flag on every rank (a host-side broadcast, no device sync)."""
    if world == 1:
        return flag
    value = torch.tensor([float(flag)])
    dist.broadcast(value, src=0, group=group)
    return bool(value.item())
