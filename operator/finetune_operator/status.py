"""Pure status arithmetic: the status fields that change when the job is observed anew."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetune_operator.api import Phase
from finetune_operator.conditions import conditions_for_phase
from finetune_operator.phases import Observation


def current_phase(status: Mapping[str, Any] | None) -> Phase | None:
    value = (status or {}).get("phase")
    try:
        return Phase(value) if value else None
    except ValueError:
        return None


def truncate(message: str, limit: int) -> str:
    """Keep the head and the tail of a long message: the tail of a traceback says most."""
    if len(message) <= limit:
        return message
    keep = (limit - 5) // 2
    return f"{message[:keep]} ... {message[-keep:]}"


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
    """The status fields to patch (empty when nothing that matters changed).

    A finished job stays finished: later observations do not change its phase.
    """
    status = status or {}
    old_phase = current_phase(status)
    if old_phase is not None and old_phase.is_terminal():
        return {}
    rayjob_status = (rayjob or {}).get("status") or {}
    message = truncate(observation.message, max_message_length)
    wanted: dict[str, Any] = {
        "phase": observation.phase.value,
        "reason": observation.reason,
        "message": message,
        "conditions": conditions_for_phase(
            list(status.get("conditions") or []),
            observation.phase,
            reason=observation.reason,
            message=message,
            now=now,
            generation=generation,
        ),
    }
    if generation is not None:
        wanted["observedGeneration"] = generation
    if rayjob_name is not None:
        wanted["rayJobName"] = rayjob_name
    if attempts is not None:
        wanted["attempts"] = attempts
    started = observation.phase in (Phase.INITIALIZING, Phase.RUNNING) or (
        observation.phase.is_terminal() and rayjob_status
    )
    if started and not status.get("startTime"):
        wanted["startTime"] = rayjob_status.get("startTime") or now
    if observation.phase.is_terminal() and not status.get("completionTime"):
        wanted["completionTime"] = rayjob_status.get("endTime") or now
    return {key: value for key, value in wanted.items() if status.get(key) != value}
