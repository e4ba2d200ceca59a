"""Learning-rate schedule, step counting and early stopping."""

from __future__ import annotations

import itertools
import math

import pytest
from finetune_trainer.schedule import (
    EarlyStopping,
    lr_multiplier,
    steps_per_epoch,
    total_steps,
    warmup_steps,
)


def test_warmup_rises_linearly_to_the_peak():
    factors = [lr_multiplier(s, total=100, warmup=4, kind="cosine") for s in range(5)]
    assert factors[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert factors[4] == pytest.approx(1.0)
    assert all(b > a for a, b in itertools.pairwise(factors))


@pytest.mark.parametrize(
    ("kind", "middle", "end"),
    [("cosine", 0.5, 0.0), ("linear", 0.5, 0.0), ("constant", 1.0, 1.0)],
)
def test_decay_after_warmup(kind, middle, end):
    assert lr_multiplier(50, total=100, warmup=0, kind=kind) == pytest.approx(middle)
    assert lr_multiplier(100, total=100, warmup=0, kind=kind) == pytest.approx(end, abs=1e-9)


def test_cosine_stays_above_linear_in_the_first_half():
    for step in range(1, 50):
        cosine = lr_multiplier(step, total=100, warmup=0, kind="cosine")
        assert cosine > lr_multiplier(step, total=100, warmup=0, kind="linear")


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="lrScheduler"):
        lr_multiplier(0, total=10, warmup=0, kind="exotic")


def test_step_counts():
    assert steps_per_epoch(rows=100, batch_size=32) == 3  # the partial batch is dropped
    assert total_steps(rows=100, batch_size=32, epochs=2, max_steps=None) == 6
    assert total_steps(rows=100, batch_size=32, epochs=2, max_steps=5) == 5
    assert warmup_steps(100, 0.03) == 3
    assert warmup_steps(10, 0.0) == 0


def test_early_stopping_waits_patience_evaluations_without_improvement():
    policy = EarlyStopping(patience=2, min_delta=0.1)
    assert not policy.update(3.0)
    assert not policy.update(2.95)  # improved by less than minDelta: a bad evaluation
    assert not policy.update(2.5)  # real improvement resets the count
    assert not policy.update(2.6)
    assert policy.update(2.45)  # second bad evaluation in a row: stop
    assert policy.best == 2.5


def test_early_stopping_state_survives_a_checkpoint():
    policy = EarlyStopping(patience=3)
    policy.update(2.0)
    policy.update(2.1)
    restored = EarlyStopping.from_state(policy.state_dict())
    assert restored == policy
    assert not restored.update(2.2)
    assert restored.update(2.3)
    assert not math.isinf(restored.best)
