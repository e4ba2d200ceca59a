"""The retention check's verdict in status: the RetentionRegressed condition and its Event.

The trainer measures each `evaluation.retention` set before and after training and says in
`status.result.retention` which passed `evaluation.maxRetentionLossIncrease`; the threshold
itself comes back in `result.metrics` (retention_max_loss_increase). Pure: progress_poll
calls these when a snapshot reaches status.
"""

from __future__ import annotations

from finetune_operator.actions import Event
from finetune_operator.api import Condition, ConditionType, FineTuneJobStatus, Result
from finetune_operator.conditions import set_condition

THRESHOLD_METRIC = "retention_max_loss_increase"  # the trainer's metrics.json key


def with_retention(status: FineTuneJobStatus, *, now: str) -> FineTuneJobStatus:
    """RetentionRegressed True when a retention set's loss rose past the threshold, False
    when every set stayed within it; not set without retention sets or a threshold."""
    result = status.result
    if result is None or not result.retention or THRESHOLD_METRIC not in result.metrics:
        return status
    limit = result.metrics[THRESHOLD_METRIC]
    exceeded = [r for r in result.retention if r.exceeded]
    if exceeded:
        conditions = set_condition(
            status.conditions,
            ConditionType.RETENTION_REGRESSED,
            "True",
            reason="RetentionLossIncreased",
            message=regression_message(result, limit),
            now=now,
        )
    else:
        conditions = set_condition(
            status.conditions,
            ConditionType.RETENTION_REGRESSED,
            "False",
            reason="RetentionWithinLimit",
            message=f"every retention set's loss rose by at most {limit:g} ({_changes(result)})",
            now=now,
        )
    return status.model_copy(update={"conditions": conditions})


def regression_message(result: Result, limit: float) -> str:
    sets = "; ".join(
        f"{r.name}: loss {r.loss_before:.4f} -> {r.loss_after:.4f} (+{r.loss_increase:.4f})"
        for r in result.retention or []
        if r.exceeded
    )
    return (
        f"retention loss rose past maxRetentionLossIncrease {limit:g}: {sets}; the model "
        "was written: check it before use"
    )


def retention_events(before: FineTuneJobStatus, after: FineTuneJobStatus) -> list[Event]:
    """A Warning Event when the job turns RetentionRegressed."""
    was, now = _regressed(before), _regressed(after)
    if now is None or now.status != "True" or (was is not None and was.status == "True"):
        return []
    return [Event("Warning", "RetentionRegressed", now.message or "retention regressed")]


def _regressed(status: FineTuneJobStatus) -> Condition | None:
    return next((c for c in status.conditions if c.type is ConditionType.RETENTION_REGRESSED), None)


def _changes(result: Result) -> str:
    return ", ".join(f"{r.name} {r.loss_increase:+.4f}" for r in result.retention or [])
