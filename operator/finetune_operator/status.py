"""Pure status arithmetic on the API's own models: the stored status parsed, observed anew, and
the merge patch between the two (the wire forms' difference)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pydantic

from finetune_operator.api import (
    CheckpointRef,
    Condition,
    FineTuneJobStatus,
    Phase,
    Progress,
    Result,
)
from finetune_operator.conditions import conditions_for_phase
from finetune_operator.phases import Observation

logger = logging.getLogger(__name__)

# The status fields that hold objects, so that their unknown keys can be dropped too.
NESTED: dict[str, type[pydantic.BaseModel]] = {
    "conditions": Condition,
    "progress": Progress,
    "lastCheckpoint": CheckpointRef,
    "result": Result,
}


def current_phase(status: Mapping[str, Any] | None) -> Phase | None:
    value = (status or {}).get("phase")
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def parse_status(raw: Mapping[str, Any] | None) -> FineTuneJobStatus:
    """The stored status as a model. What does not parse (a field from another version of the
    operator, one set by hand) is left out: it must never stop the job being reconciled."""
    try:
        return FineTuneJobStatus.model_validate(dict(raw or {}))
    except pydantic.ValidationError:
        pass
    kept: dict[str, Any] = {}
    for key, value in _known(FineTuneJobStatus, raw or {}).items():
        model = NESTED.get(key)
        if model is not None and isinstance(value, list):
            value = [_known(model, item) for item in value if isinstance(item, Mapping)]
            value = [item for item in value if _parses(model, item)]
        elif model is not None and isinstance(value, Mapping):
            value = _known(model, value)
        if _parses(FineTuneJobStatus, {key: value}):
            kept[key] = value
        else:
            logger.debug("ignoring status.%s: not a valid value (%r)", key, value)
    return FineTuneJobStatus.model_validate(kept)


def _known(model: type[pydantic.BaseModel], value: Mapping[str, Any]) -> dict[str, Any]:
    names = {field.alias or name for name, field in model.model_fields.items()}
    return {key: item for key, item in value.items() if key in names}


def _parses(model: type[pydantic.BaseModel], value: Mapping[str, Any]) -> bool:
    try:
        model.model_validate(value)
    except pydantic.ValidationError:
        return False
    return True


def truncate(message: str, limit: int) -> str:
    """Keep the head and the tail of a long message: the tail of a traceback says most."""
    if len(message) <= limit:
        return message
    keep = (limit - 5) // 2
    return f"{message[:keep]} ... {message[-keep:]}"


def observe(
    status: FineTuneJobStatus,
    observation: Observation,
    *,
    now: str,
    generation: int | None = None,
    rayjob_status: Mapping[str, Any] | None = None,
    rayjob_name: str | None = None,
    attempts: int | None = None,
    max_message_length: int = 1024,
) -> FineTuneJobStatus:
    """The status after one observation. A finished job stays finished: later observations
    do not change it."""
    if status.phase is not None and status.phase.is_terminal():
        return status
    rayjob_status = rayjob_status or {}
    message = truncate(observation.message, max_message_length)
    conditions = conditions_for_phase(
        status.conditions,
        observation.phase,
        reason=observation.reason,
        message=message,
        now=now,
        generation=generation,
    )
    changes: dict[str, Any] = {
        "phase": observation.phase,
        "reason": observation.reason,
        "message": message,
        "conditions": conditions,
    }
    given = {"observed_generation": generation, "ray_job_name": rayjob_name, "attempts": attempts}
    changes.update({key: value for key, value in given.items() if value is not None})
    started = observation.phase in (Phase.INITIALIZING, Phase.RUNNING) or (
        observation.phase.is_terminal() and rayjob_status
    )
    if started and not status.start_time:
        changes["start_time"] = str(rayjob_status.get("startTime") or now)
    if observation.phase.is_terminal() and not status.completion_time:
        changes["completion_time"] = str(rayjob_status.get("endTime") or now)
    return status.model_copy(update=changes)


def status_patch(old: FineTuneJobStatus, new: FineTuneJobStatus) -> dict[str, Any]:
    """The JSON merge patch from `old` to `new`: each top-level field whose wire form differs
    (null for one that is gone)."""
    before, after = old.to_wire(), new.to_wire()
    patch = {key: value for key, value in after.items() if before.get(key) != value}
    patch.update({key: None for key in before if key not in after})
    return patch


def status_update(
    status: Mapping[str, Any] | None,
    observation: Observation,
    *,
    now: str,
    generation: int | None = None,
    rayjob: Mapping[str, Any] | None = None,
    rayjob_name: str | None = None,
    attempts: int | None = None,
    max_message_length: int = 1024,
) -> dict[str, Any]:
    """The status fields to patch for one observation of a stored status (empty when nothing
    that matters changed)."""
    stored = parse_status(status)
    new = observe(
        stored,
        observation,
        now=now,
        generation=generation,
        rayjob_status=(rayjob or {}).get("status"),
        rayjob_name=rayjob_name,
        attempts=attempts,
        max_message_length=max_message_length,
    )
    return status_patch(stored, new)
