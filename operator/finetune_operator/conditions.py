"""Status conditions, so that `kubectl wait --for=condition=Succeeded` works."""

from __future__ import annotations

from typing import Any

from finetune_operator.api import ConditionType, Phase

# Which condition is True in each phase; the others are False.
TRUE_IN_PHASE = {
    Phase.RUNNING: ConditionType.RUNNING,
    Phase.SUCCEEDED: ConditionType.SUCCEEDED,
    Phase.FAILED: ConditionType.FAILED,
    Phase.SUSPENDED: ConditionType.SUSPENDED,
}


def set_condition(
    conditions: list[dict[str, Any]],
    type_: ConditionType,
    status: str,
    *,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """A new list with one condition set; lastTransitionTime moves only when status changes."""
    result = [dict(c) for c in conditions]
    current = next((c for c in result if c.get("type") == type_.value), None)
    if current is None:
        current = {"type": type_.value}
        result.append(current)
    if current.get("status") != status or not current.get("lastTransitionTime"):
        current["lastTransitionTime"] = now
    current.update(status=status, reason=reason, message=message)
    if generation is not None:
        current["observedGeneration"] = generation
    return result


def conditions_for_phase(
    conditions: list[dict[str, Any]],
    phase: Phase,
    *,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """All four conditions as they read in `phase`: the matching one True, the rest False."""
    true_type = TRUE_IN_PHASE.get(phase)
    result = conditions
    for type_ in ConditionType:
        if type_ is true_type:
            status, why, detail = "True", reason, message
        else:
            status, why, detail = "False", phase.value, f"the job is {phase.value}"
        result = set_condition(
            result, type_, status, reason=why, message=detail, now=now, generation=generation
        )
    return sorted(result, key=lambda c: list(ConditionType).index(ConditionType(c["type"])))
