"""How long to train, the learning-rate schedule and early stopping: small pure policies."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def total_steps(*, rows: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps planned: maxSteps when set, else epochs over the (dropped-last) batches."""
    if max_steps is not None:
        return max_steps
    return max(1, rows // batch_size) * epochs


def steps_per_epoch(rows: int, batch_size: int) -> int:
    """Full global batches per pass over the data (the last partial batch is dropped)."""
    return max(1, rows // batch_size)


def warmup_steps(total: int, warmup_ratio: float) -> int:
    return math.ceil(total * warmup_ratio)


def lr_multiplier(step: int, *, total: int, warmup: int, kind: str) -> float:
    """Factor on the peak learning rate before optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)  # never exactly 0: the first step must move
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"spec.hyperparameters.lrScheduler: unknown schedule {kind!r}")


@dataclass
class EarlyStopping:
    """Stop after `patience` evaluations that do not beat the best loss by more than min_delta."""

    patience: int
    min_delta: float = 0.0
    best: float = math.inf
    bad_evaluations: int = 0

    def update(self, eval_loss: float) -> bool:
        """Record one evaluation; True when training should stop."""
        if eval_loss < self.best - self.min_delta:
            self.best = eval_loss
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
        return self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, float]) -> EarlyStopping:
        return cls(
            patience=int(state["patience"]),
            min_delta=float(state["min_delta"]),
            best=float(state["best"]),
            bad_evaluations=int(state["bad_evaluations"]),
        )


def early_stopping_for(policy: Any, saved: dict[str, float] | None) -> EarlyStopping | None:
    """The job's early stopping (`spec.evaluation.earlyStopping`, None when off), carried
    on from a checkpoint's saved state when there is one."""
    if policy is None:
        return None
    if saved:
        return EarlyStopping.from_state(saved)
    return EarlyStopping(patience=policy.patience, min_delta=policy.min_delta)
