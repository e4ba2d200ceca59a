"""Each rank gets only the training rows it reads, and reads exactly what it read before."""

from __future__ import annotations

import pickle

import pytest
from finetune_trainer.batches import micro_batches_for_step
from finetune_trainer.shards import RankRows, split_for_ranks


def make_rows(n: int) -> dict[str, list]:
    train = [{"input_ids": [i, i + 1], "labels": [i, i + 1], "position_ids": [0, 1]}
             for i in range(n)]  # fmt: skip
    return {"train": train, "validation": train[:3], "test": [], "generation": []}


@pytest.mark.parametrize(
    ("n", "batch", "world", "micro", "epochs"),
    [(100, 8, 1, 4, 2), (100, 8, 4, 1, 1), (103, 12, 3, 2, 3), (64, 16, 8, 2, 2)],
)
def test_every_rank_sees_the_batches_it_saw_with_all_rows(n, batch, world, micro, epochs):
    rows = make_rows(n)
    steps_per_epoch = n // batch
    total = steps_per_epoch * epochs
    shards = split_for_ranks(rows, seed=3, steps_per_epoch=steps_per_epoch, total_steps=total,
                             global_batch=batch, world_size=world)  # fmt: skip
    for rank, shard in enumerate(shards):
        for step in range(total):
            kwargs = dict(step=step, seed=3, steps_per_epoch=steps_per_epoch, global_batch=batch,
                          micro=micro, rank=rank, world_size=world)  # fmt: skip
            expected = micro_batches_for_step(rows["train"], **kwargs)
            assert micro_batches_for_step(shard["train"], **kwargs) == expected
        assert shard["validation"] == rows["validation"]  # evaluation splits go whole


def test_a_rank_is_shipped_its_share_of_the_rows_not_all_of_them():
    rows = make_rows(800)
    one_epoch = split_for_ranks(rows, seed=0, steps_per_epoch=100, total_steps=100,
                                global_batch=8, world_size=4)  # fmt: skip
    assert [len(s["train"].rows) for s in one_epoch] == [200, 200, 200, 200]
    everything = len(pickle.dumps(rows["train"]))
    assert len(pickle.dumps(one_epoch[0]["train"])) < everything / 3
    # Over three epochs a rank reads about 1 - (3/4)^3 = 58 % of the rows.
    three = split_for_ranks(rows, seed=0, steps_per_epoch=100, total_steps=300,
                            global_batch=8, world_size=4)  # fmt: skip
    assert 0.5 < len(three[0]["train"].rows) / 800 < 0.66


def test_a_row_not_shipped_to_the_rank_is_an_error_not_a_silent_substitute():
    shard = RankRows(10, {3: {"input_ids": [1]}})
    assert len(shard) == 10 and shard[3] == {"input_ids": [1]}
    with pytest.raises(IndexError, match="row 4 was not shipped"):
        shard[4]
