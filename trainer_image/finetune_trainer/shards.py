"""Each rank gets the training rows it will read, not a copy of all of them.

The order of training is a pure function of (seed, epoch, step) over all rows
(batches.micro_batches_for_step), so the driver can work out which rows each rank reads
in the whole run and put only those in Ray's object store for it: in an epoch a rank
reads 1/world of the rows, over E epochs 1 - (1 - 1/world)^E of them. The rows keep their
global index, so every rank sees exactly the batches it saw with all rows, whatever the
number of ranks, and a resumed run stays exact. The evaluation splits and generation
samples (a few percent of the data) go whole to every rank: each rank's evaluation pass
pads itself to the same number of batches from them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, overload

from finetune_trainer.batches import epoch_order
from finetune_trainer.data.packing import Row


class RankRows(Sequence[Row]):
    """The training rows one rank reads, indexed by their position among all rows."""

    def __init__(self, total: int, rows: dict[int, Row]) -> None:
        self.total, self.rows = total, rows

    def __len__(self) -> int:
        return self.total

    @overload
    def __getitem__(self, index: int) -> Row: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Row]: ...
    def __getitem__(self, index: int | slice) -> Row | Sequence[Row]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.total))]
        try:
            return self.rows[index]
        except KeyError:
            raise IndexError(f"training row {index} was not shipped to this rank") from None

    def __iter__(self) -> Iterator[Row]:
        raise TypeError("a rank holds only the rows it reads; index them, do not iterate")


def rows_read_by_rank(
    n_rows: int,
    *,
    seed: int,
    steps_per_epoch: int,
    total_steps: int,
    global_batch: int,
    world_size: int,
) -> list[set[int]]:
    """The indices of the training rows each rank reads over the whole run."""
    per_rank = global_batch // world_size
    read: list[set[int]] = [set() for _ in range(world_size)]
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        order = epoch_order(n_rows, seed=seed, epoch=epoch)
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        for rank, indices in enumerate(read):
            for index in range(steps):
                start = index * global_batch + rank * per_rank
                indices.update(order[start : start + per_rank])
    return read


def split_for_ranks(
    rows: dict[str, list[Any]],
    *,
    seed: int,
    steps_per_epoch: int,
    total_steps: int,
    global_batch: int,
    world_size: int,
) -> list[dict[str, Any]]:
    """Each rank's data: its training rows (RankRows) and every evaluation split whole."""
    train = rows["train"]
    read = rows_read_by_rank(
        len(train),
        seed=seed,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        global_batch=global_batch,
        world_size=world_size,
    )
    return [
        rows | {"train": RankRows(len(train), {i: train[i] for i in sorted(indices)})}
        for indices in read
    ]
