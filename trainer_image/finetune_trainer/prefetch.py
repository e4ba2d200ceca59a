"""Feed the device: the next step's micro batches are collated while this step computes.

Collating turns Python lists into tensors (and, for packed rows, builds their masks): CPU
work that the device would otherwise sit through before every step. One background thread
one step ahead hides it, as a step's compute takes longer than its collation. On CUDA the
host tensors are pinned, so their copy to the device runs asynchronously (non_blocking)
and overlaps with the kernels already queued. The batches are a pure function of the step
(see batches.py), so the order and the numbers are the same as without the thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from finetune_trainer.attention import PackedDocuments
from finetune_trainer.batches import collate, to_device
from finetune_trainer.data.packing import Row
from finetune_trainer.data.tokenize import IGNORE_INDEX

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


@dataclass(frozen=True)
class HostBatches:
    """One step's micro batches on the host, with the counts the step's loss is scaled by."""

    batches: list[dict[str, Any]]
    loss_tokens: int  # label tokens that carry loss, over these micro batches
    tokens: int  # non-padding tokens

    def to(self, device: torch.device) -> list[dict[str, Any]]:
        """The batches on `device`; from pinned memory the copies do not wait for it."""
        return [to_device(batch, device) for batch in self.batches]


def collate_step(
    micro_batches: list[list[Row]], pad_token_id: int, dtype: torch.dtype, *, pin: bool
) -> HostBatches:
    """Collate (and pin) a step's micro batches and count their tokens, all on the host:
    counting here means the training step never waits for the device to learn them."""
    batches = [collate(rows, pad_token_id, dtype) for rows in micro_batches]
    if pin:
        batches = [pin_batch(batch) for batch in batches]
    return HostBatches(
        batches,
        loss_tokens=sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches),
        tokens=sum(int(b["num_tokens"]) for b in batches),
    )


def pin_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """Page-locked copies of the batch's tensors, the packed documents' edges included."""
    pinnable = torch.Tensor | PackedDocuments
    return {k: v.pin_memory() if isinstance(v, pinnable) else v for k, v in batch.items()}


def ahead(items: Iterable[Item], load: Callable[[Item], Loaded]) -> Iterator[Loaded]:
    """`load(item)` for each item in order, the next one loading on a background thread
    while the caller works on the current one. An error in `load` is raised where its
    result is taken. Closing the iterator early waits for the one load in flight."""
    remaining = iter(items)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="finetune-prefetch") as pool:

        def submit_next() -> Future[Loaded] | None:
            for item in remaining:
                return pool.submit(load, item)
            return None

        pending = submit_next()
        while pending is not None:
            result = pending.result()
            pending = submit_next()
            yield result
