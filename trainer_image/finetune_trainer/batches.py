"""Which rows each rank sees at each step, and the summed token loss of a micro batch.

The order is a pure function of (seed, epoch, step): a resumed run sees exactly the
batches it would have seen without the interruption, so no sampler state is saved.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer.attention import (
    PackedDocuments,
    dense_document_mask,
    uses_packed_attention,
)
from finetune_trainer.data.collate import collate_rows
from finetune_trainer.data.packing import Row
from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.loss import LossRequest, find_loss_head


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
    """Every tensor of `batch` on `device` (copies may overlap compute: pinned sources
    copy asynchronously); the packed documents' tensors too."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor | PackedDocuments) else v
        for k, v in batch.items()
    }


def collate(rows: list[Row], pad_token_id: int, dtype: torch.dtype) -> dict[str, Any]:
    """Tensors for `rows` and their loss targets, all built on the host. `dtype` is the
    activations': a model without packed attention gets its dense mask in it."""
    batch: dict[str, Any] = collate_rows(rows, pad_token_id)
    targets = shifted_targets(batch)
    length = targets.shape[1] + 1
    # Loss positions index the head's input, B*L hidden states; target (b, i) is the token
    # after position (b, i). Counted here so no step asks the device for them.
    rows_, columns = (targets != IGNORE_INDEX).nonzero(as_tuple=True)
    batch["loss_positions"] = rows_ * length + columns
    batch["loss_targets"] = targets[rows_, columns]
    batch["loss_token_count"] = len(rows_)
    batch["num_tokens"] = int(batch["num_tokens"])
    batch["mask_dtype"] = dtype
    return batch


def shifted_targets(batch: dict[str, Any]) -> torch.Tensor:
    """Next-token targets; a packed document's first token is never predicted from the
    previous document's last one."""
    targets: torch.Tensor = batch["labels"][:, 1:].clone()
    targets[batch["position_ids"][:, 1:] == 0] = IGNORE_INDEX
    return targets


def model_inputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """What the model's forward takes: the packed documents for a packed attention kernel,
    else the dense LxL mask, built here on the batch's device (the reference path)."""
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    if uses_packed_attention(model):
        inputs["packed_documents"] = batch["packed_documents"]
    else:
        inputs["attention_mask"] = dense_document_mask(
            batch["packed_documents"], batch["mask_dtype"]
        )
    return inputs


def forward_sums(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, int, torch.Tensor, int]:
    """(summed token loss, loss tokens, correctly predicted loss tokens, non-padding tokens):
    the sums are device tensors and the counts host ints, so nothing waits on the device."""
    request = LossRequest(batch["loss_positions"], batch["loss_targets"])
    head = find_loss_head(model)
    if head is not None:
        with head.computing_loss(request):
            summary = model(**model_inputs(model, batch), use_cache=False).logits
        loss_sum, correct = summary[0], summary[1].detach()
    else:  # a model whose head returns logits: the full-vocabulary path
        logits = model(**model_inputs(model, batch), use_cache=False).logits
        picked = logits.reshape(-1, logits.shape[-1]).index_select(0, request.positions).float()
        loss_sum = F.cross_entropy(picked, request.targets, reduction="sum")
        correct = (picked.argmax(-1) == request.targets).sum()
    return loss_sum, int(batch["loss_token_count"]), correct, int(batch["num_tokens"])
