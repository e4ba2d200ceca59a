"""runPolicy.activeDeadlineSeconds: when a job fails for running too long, or wakes to check."""

from __future__ import annotations

import datetime

import pytest
from finetune_operator import timeutil
from finetune_operator.actions import Fail, WakeAt
from finetune_operator.api import FineTuneJobStatus, Phase
from finetune_operator.policies import deadline

NOW = datetime.datetime(2026, 1, 1, 1, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("start", "limit", "left"),
    [
        (None, 60, None),
        ("2026-01-01T00:59:00Z", None, None),
        ("2026-01-01T00:59:00Z", 120, 60.0),
        ("2026-01-01T00:58:00Z", 120, 0.0),
        ("2026-01-01T00:00:00Z", 120, -3480.0),
    ],
)
def test_deadline_seconds_left(start, limit, left) -> None:
    assert timeutil.seconds_left(start, limit, NOW) == left


def test_deadline_observation_names_the_field() -> None:
    observation = deadline.deadline_observation(90)
    assert (observation.phase, observation.reason) == (Phase.FAILED, "DeadlineExceeded")
    assert "activeDeadlineSeconds" in observation.message


EXCEEDED = Fail(deadline.deadline_observation(120))


@pytest.mark.parametrize(
    ("phase", "start", "limit", "action"),
    [
        ("Running", "2026-01-01T00:59:00Z", 120, WakeAt(60.0)),
        ("Initializing", "2026-01-01T00:59:30Z", 120, WakeAt(90.0)),
        ("Suspended", "2026-01-01T00:59:00Z", 120, WakeAt(60.0)),
        ("Running", "2026-01-01T00:58:00Z", 120, EXCEEDED),
        ("Running", "2026-01-01T00:00:00Z", 120, EXCEEDED),
        ("Suspended", "2026-01-01T00:00:00Z", 120, EXCEEDED),
        # Not started yet: the clock has not begun.
        ("Pending", None, 120, None),
        ("Running", "2026-01-01T00:00:00Z", None, None),
        # A finished job is past deadlines.
        ("Succeeded", "2026-01-01T00:00:00Z", 120, None),
        ("Failed", "2026-01-01T00:00:00Z", 120, None),
    ],
)
def test_deadline_decides(phase, start, limit, action) -> None:
    status = FineTuneJobStatus.model_validate({"phase": phase, "startTime": start})
    assert deadline.decide(limit, status, NOW) == action
