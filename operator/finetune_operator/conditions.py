"""Status conditions, so that `kubectl wait --for=condition=Succeeded` works."""

from __future__ import annotations

from typing import Literal

from finetune_operator.api import Condition, ConditionType, Phase

ConditionStatus = Literal["True", "False", "Unknown"]

# Which condition is True in each phase; the others are False.
TRUE_IN_PHASE = {
    Phase.RUNNING: ConditionType.RUNNING,
    Phase.SUCCEEDED: ConditionType.SUCCEEDED,
    Phase.FAILED: ConditionType.FAILED,
    Phase.SUSPENDED: ConditionType.SUSPENDED,
}


# The conditions a phase sets; ProgressAvailable is set by the progress poll alone.
PHASE_CONDITIONS = (
    ConditionType.RUNNING,
    ConditionType.SUCCEEDED,
    ConditionType.FAILED,
    ConditionType.SUSPENDED,
)


def set_condition(
    conditions: list[Condition],
    type_: ConditionType,
    status: ConditionStatus,
    *,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """A new list with one condition set; lastTransitionTime moves only when status changes."""
    current = next((c for c in conditions if c.type is type_), None)
    moved_at = now
    if current is not None and current.status == status and current.last_transition_time:
        moved_at = current.last_transition_time
    kept_generation = current.observed_generation if current is not None else None
    updated = Condition.model_validate(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": moved_at,
            "observedGeneration": kept_generation if generation is None else generation,
        }
    )
    if current is None:
        return [*conditions, updated]
    return [updated if c is current else c for c in conditions]


def conditions_for_phase(
    conditions: list[Condition],
    phase: Phase,
    *,
    reason: str,
    message: str,
    now: str,
    generation: int | None = None,
) -> list[Condition]:
    """The four phase conditions as they read in `phase`: the matching one True, the rest
    False (others, such as ProgressAvailable, are kept as they are)."""
    true_type = TRUE_IN_PHASE.get(phase)
    result = conditions
    for type_ in PHASE_CONDITIONS:
        status: ConditionStatus
        if type_ is true_type:
            status, why, detail = "True", reason, message
        else:
            status, why, detail = "False", phase.value, f"the job is {phase.value}"
        result = set_condition(
            result, type_, status, reason=why, message=detail, now=now, generation=generation
        )
    order = list(ConditionType)
    return sorted(result, key=lambda c: order.index(c.type))
