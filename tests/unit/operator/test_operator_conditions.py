"""Conditions: one True per phase, lastTransitionTime moving only on a real change."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_operator.api import Condition, ConditionType, Phase
from finetune_operator.conditions import conditions_for_phase, set_condition

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"


def wire(conditions: list[Condition]) -> list[dict[str, Any]]:
    return [c.to_wire() for c in conditions]


def test_new_condition_gets_the_time() -> None:
    result = set_condition([], ConditionType.RUNNING, "True", reason="Running", message="m", now=T0)
    assert wire(result) == [
        {
            "type": "Running",
            "status": "True",
            "reason": "Running",
            "message": "m",
            "lastTransitionTime": T0,
        }
    ]


@pytest.mark.parametrize(
    ("old_status", "new_status", "moves"),
    [("True", "True", False), ("True", "False", True), ("False", "True", True)],
)
def test_transition_time_moves_only_when_status_changes(old_status, new_status, moves) -> None:
    before = set_condition([], ConditionType.RUNNING, old_status, reason="A", message="a", now=T0)
    after = set_condition(
        before, ConditionType.RUNNING, new_status, reason="B", message="b", now=T1
    )
    assert wire(after)[0]["lastTransitionTime"] == (T1 if moves else T0)
    assert (wire(after)[0]["reason"], wire(after)[0]["message"]) == ("B", "b")
    assert wire(before)[0]["reason"] == "A"  # the input is not mutated


def test_other_conditions_are_kept() -> None:
    conditions = set_condition([], ConditionType.RUNNING, "True", reason="R", message="", now=T0)
    conditions = set_condition(
        conditions, ConditionType.FAILED, "False", reason="R", message="", now=T0
    )
    assert [c["type"] for c in wire(conditions)] == ["Running", "Failed"]


@pytest.mark.parametrize(
    ("phase", "true_type"),
    [
        (Phase.PENDING, None),
        (Phase.INITIALIZING, None),
        (Phase.RUNNING, "Running"),
        (Phase.SUCCEEDED, "Succeeded"),
        (Phase.FAILED, "Failed"),
        (Phase.SUSPENDED, "Suspended"),
    ],
)
def test_conditions_for_phase(phase, true_type) -> None:
    conditions = wire(
        conditions_for_phase([], phase, reason="Why", message="m", now=T0, generation=3)
    )
    assert [c["type"] for c in conditions] == ["Running", "Succeeded", "Failed", "Suspended"]
    assert [c["type"] for c in conditions if c["status"] == "True"] == (
        [true_type] if true_type else []
    )
    assert all(c["observedGeneration"] == 3 for c in conditions)


def test_running_to_succeeded_moves_only_the_changed_conditions() -> None:
    running = conditions_for_phase([], Phase.RUNNING, reason="Running", message="", now=T0)
    done = conditions_for_phase(running, Phase.SUCCEEDED, reason="Completed", message="", now=T1)
    times = {c["type"]: c["lastTransitionTime"] for c in wire(done)}
    assert times == {"Running": T1, "Succeeded": T1, "Failed": T0, "Suspended": T0}
