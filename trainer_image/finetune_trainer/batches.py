"""Which rows each rank sees at each step, and the summed token loss of a micro batch.

The order is a pure function of (seed, epoch, step): a resumed run sees exactly the
batches it would have seen without the interruption, so no sampler state is saved.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer.data.collate import collate_rows
from finetune_trainer.data.packing import Row
from finetune_trainer.data.tokenize import IGNORE_INDEX


def epoch_order(n_rows: int, *, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_rows, generator=generator).tolist()


def micro_batches_for_step(
    rows: list[Row],
    step: int,
    *,
    seed: int,
    steps_per_epoch: int,
    global_batch: int,
    micro: int,
    rank: int,
    world_size: int,
) -> list[list[Row]]:
    """This rank's micro batches for optimizer step `step` (0-based)."""
    epoch, index = divmod(step, steps_per_epoch)
    order = epoch_order(len(rows), seed=seed, epoch=epoch)
    batch = order[index * global_batch : (index + 1) * global_batch]
    per_rank = global_batch // world_size
    mine = [rows[i] for i in batch[rank * per_rank : (rank + 1) * per_rank]]
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def shard_for_eval(
    rows: list[Row], *, micro: int, rank: int, world_size: int
) -> list[list[Row] | None]:
    """Evaluation micro batches of this rank, padded with None so every rank runs as many
    forward passes (ZeRO-3 gathers parameters collectively in each one)."""
    per_rank = -(-len(rows) // world_size)
    n_batches = -(-per_rank // micro)
    mine = rows[rank::world_size]
    batches: list[list[Row] | None] = [mine[i : i + micro] for i in range(0, len(mine), micro)]
    return batches + [None] * (n_batches - len(batches))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def collate(rows: list[Row], pad_token_id: int, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors for `rows`; the additive attention mask must match the activations' dtype."""
    return collate_rows(rows, pad_token_id, mask_dtype=dtype)


def shifted_targets(batch: dict[str, Any]) -> torch.Tensor:
    """Next-token targets; a packed document's first token is never predicted from the
    previous document's last one."""
    targets: torch.Tensor = batch["labels"][:, 1:].clone()
    targets[batch["position_ids"][:, 1:] == 0] = IGNORE_INDEX
    return targets


def forward_sums(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, int, int, int]:
    """(summed token loss, loss tokens, correctly predicted loss tokens, non-padding tokens)."""
    outputs = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    logits = outputs.logits[:, :-1].float()
    targets = shifted_targets(batch)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    counted = targets != IGNORE_INDEX
    correct = int(((logits.argmax(-1) == targets) & counted).sum())
    return loss_sum, int(counted.sum()), correct, int(batch["num_tokens"])
