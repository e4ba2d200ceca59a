"""Pure progress arithmetic: the trainer's /progress body read through the API's models, the
strings `kubectl get` shows, what a snapshot changes in status, and the milestone Events.

No I/O here: `progress_poll` reads the endpoint and `reconcile` writes status; both ask these
functions what to do, so each decision is tested with a table.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any, TypeVar

import pydantic

from finetune_operator.actions import Event
from finetune_operator.api import (
    CheckpointRef,
    Condition,
    ConditionType,
    FineTuneJobStatus,
    Progress,
    Result,
)
from finetune_operator.conditions import set_condition

# What the operator fills in itself; the trainer's values for these are not trusted.
DERIVED = ("display", "eta", "updated_at")
# The metrics the TrainingFinished Event names, in this order, when the result has them.
HEADLINE_METRICS = ("train_loss", "eval_loss", "eval_perplexity", "test_loss", "test_accuracy")


class MalformedProgress(ValueError):
    """The body is not the progress contract; the message says where it departs from it."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One reading of /progress, validated by the API's own models."""

    progress: Progress
    last_checkpoint: CheckpointRef | None
    result: Result | None

    def content(self) -> tuple[Any, ...]:
        """What the trainer reported, without the fields the operator derives."""
        return (
            self.progress.model_dump(exclude=set(DERIVED)),
            self.last_checkpoint.to_wire() if self.last_checkpoint else None,
            self.result.to_wire() if self.result else None,
        )


def parse_body(raw: bytes) -> Snapshot:
    """The /progress body as a Snapshot; MalformedProgress for anything else. Keys this
    operator does not know (a newer trainer's) are ignored, so an upgrade never breaks it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MalformedProgress(f"not JSON: {error}") from None
    except RecursionError:
        raise MalformedProgress("not JSON: nested too deeply") from None
    if not isinstance(body, dict):
        raise MalformedProgress(f"expected a JSON object, got {type(body).__name__}")
    progress = _model(Progress, body.get("progress") or {}, "progress")
    checkpoint = body.get("lastCheckpoint")
    result = body.get("result")
    return Snapshot(
        progress=progress.model_copy(update=dict.fromkeys(DERIVED)),
        last_checkpoint=None
        if checkpoint is None
        else _model(CheckpointRef, checkpoint, "lastCheckpoint"),
        result=None if result is None else _model(Result, result, "result"),
    )


M = TypeVar("M", bound=pydantic.BaseModel)


def _model(model: type[M], value: Any, where: str) -> M:
    if not isinstance(value, Mapping):
        raise MalformedProgress(f"{where}: expected an object, got {type(value).__name__}")
    names = {field.alias or name for name, field in model.model_fields.items()}
    try:
        return model.model_validate({k: v for k, v in value.items() if k in names})
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        path = ".".join(str(part) for part in (where, *first["loc"]))
        raise MalformedProgress(f"{path}: {first['msg']}") from None


def display(step: int | None, total_steps: int | None) -> str | None:
    """`1200/4000 (30%)`; the percent is rounded down so 100% means done."""
    if step is None:
        return None
    if not total_steps:
        return str(step)
    percent = math.floor(100 * step / total_steps)
    return f"{step}/{total_steps} ({percent}%)"


def eta_text(seconds: float | None) -> str | None:
    """`2h05m`, `12m30s`, `45s`, `3d04h`: the two largest units, as kubectl shows ages."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    whole = round(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def shown(snapshot: Snapshot, read_at: str) -> Progress:
    """status.progress for a snapshot: the trainer's numbers and the strings kubectl shows."""
    progress = snapshot.progress
    return progress.model_copy(
        update={
            "display": display(progress.step, progress.total_steps),
            "eta": eta_text(progress.eta_seconds),
            "updated_at": read_at,
        }
    )


def is_news(stored: FineTuneJobStatus, snapshot: Snapshot) -> bool:
    """Whether the snapshot says something status does not (the read time aside)."""
    stored_progress = stored.progress or Progress()
    before = Snapshot(
        stored_progress.model_copy(update=dict.fromkeys(DERIVED)),
        stored.last_checkpoint,
        stored.result,
    )
    return before.content() != snapshot.content()


def write_due(
    stored: FineTuneJobStatus,
    snapshot: Snapshot,
    *,
    last_write: float | None,
    now: float,
    window: float,
) -> bool:
    """Whether this pass should carry the snapshot into status: only news, at most once per
    `window` seconds, except a final result, which is never held back."""
    if not is_news(stored, snapshot):
        return False
    if snapshot.result is not None and stored.result is None:
        return True
    return last_write is None or now - last_write >= window


def with_snapshot(status: FineTuneJobStatus, snapshot: Snapshot, read_at: str) -> FineTuneJobStatus:
    """status with the snapshot's progress, newest checkpoint and result. A result once
    written is kept: a later attempt's empty one does not erase it."""
    return status.model_copy(
        update={
            "progress": shown(snapshot, read_at),
            "last_checkpoint": snapshot.last_checkpoint or status.last_checkpoint,
            "result": snapshot.result or status.result,
        }
    )


def with_availability(
    status: FineTuneJobStatus, problem: str | None, *, now: str
) -> FineTuneJobStatus:
    """ProgressAvailable: True while reads succeed, False (with the problem) once they have
    failed past the grace period. Not set at all until the first read settles it."""
    current = next(
        (c for c in status.conditions if c.type is ConditionType.PROGRESS_AVAILABLE), None
    )
    if problem is None:
        if current is not None and current.status == "True":
            return status
        conditions = set_condition(
            status.conditions,
            ConditionType.PROGRESS_AVAILABLE,
            "True",
            reason="ProgressReported",
            message="the trainer's /progress is read",
            now=now,
        )
    else:
        reason, _, detail = problem.partition(": ")
        conditions = set_condition(
            status.conditions,
            ConditionType.PROGRESS_AVAILABLE,
            "False",
            reason=reason,
            message=detail or problem,
            now=now,
        )
    return status.model_copy(update={"conditions": conditions})


def availability_events(before: FineTuneJobStatus, after: FineTuneJobStatus) -> list[Event]:
    """A Warning when progress became unavailable, a Normal Event when it came back."""
    was, now = _availability(before), _availability(after)
    if now is None or (was is not None and was.status == now.status):
        return []
    if now.status == "False":
        return [
            Event(
                "Warning",
                now.reason or "ProgressUnavailable",
                f"cannot read the trainer's progress: {now.message}",
            )
        ]
    if was is not None and was.status == "False":
        return [Event("Normal", "ProgressAvailable", "the trainer's progress can be read again")]
    return []


def _availability(status: FineTuneJobStatus) -> Condition | None:
    return next((c for c in status.conditions if c.type is ConditionType.PROGRESS_AVAILABLE), None)


def milestone_events(
    before: FineTuneJobStatus, after: FineTuneJobStatus, *, checkpoint_event_due: bool
) -> list[Event]:
    """The milestones a status write crosses: training started, a new checkpoint (when its
    throttle allows), early stop, a validation loss worse than the best so far, the result."""
    old, new = before.progress or Progress(), after.progress or Progress()
    events: list[Event] = []
    if (new.step or 0) >= 1 and not (old.step or 0) >= 1:
        events.append(
            Event(
                "Normal",
                "TrainingStarted",
                f"training started: step {new.step} of {new.total_steps}",
            )
        )
    checkpoint = after.last_checkpoint
    if checkpoint is not None and checkpoint != before.last_checkpoint and checkpoint_event_due:
        events.append(
            Event(
                "Normal",
                "CheckpointSaved",
                f"checkpoint at step {checkpoint.step}: {checkpoint.uri}",
            )
        )
    if new.early_stopped and not old.early_stopped:
        events.append(
            Event(
                "Normal",
                "EarlyStopped",
                f"early stopping ended training at step {new.step}: validation "
                f"loss {_number(new.eval_loss)}, best {_number(new.best_eval_loss)}",
            )
        )
    regressed = (
        new.eval_loss is not None
        and new.best_eval_loss is not None
        and new.eval_loss > new.best_eval_loss
        and new.eval_loss != old.eval_loss  # a new evaluation, not the one already reported
    )
    if regressed:
        events.append(
            Event(
                "Normal",
                "EvalLossRegressed",
                f"validation loss {_number(new.eval_loss)} at step {new.step} is worse "
                f"than the best so far, {_number(new.best_eval_loss)}",
            )
        )
    if after.result is not None and before.result is None:
        events.append(Event("Normal", "TrainingFinished", finished_message(after.result)))
    return events


def finished_message(result: Result) -> str:
    headline = [
        f"{key} {_number(result.metrics[key])}" for key in HEADLINE_METRICS if key in result.metrics
    ]
    where = f"; outputs in {result.output_uri}" if result.output_uri else ""
    return f"training finished: {', '.join(headline) or 'no metrics'}{where}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
