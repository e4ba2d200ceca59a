"""runPolicy.ttlSecondsAfterFinished: when a finished job is deleted, or wakes to check."""

from __future__ import annotations

import datetime

import pytest
from finetune_operator import timeutil
from finetune_operator.actions import DeleteJob, WakeAt
from finetune_operator.api import FineTuneJobStatus
from finetune_operator.policies import ttl

WHY = "(ttlSecondsAfterFinished)"
NOW = datetime.datetime(2026, 1, 1, 1, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("finished", "ttl_seconds", "left"),
    [
        (None, 60, None),
        ("2026-01-01T00:59:00Z", None, None),
        ("2026-01-01T00:59:30Z", 60, 30.0),
        ("2026-01-01T00:59:00Z", 0, -60.0),
    ],
)
def test_ttl_seconds_until_deletion(finished, ttl_seconds, left) -> None:
    assert timeutil.seconds_left(finished, ttl_seconds, NOW) == left


@pytest.mark.parametrize(
    ("phase", "finished", "ttl_seconds", "action"),
    [
        ("Succeeded", "2026-01-01T00:59:30Z", 60, WakeAt(30.0)),
        ("Failed", "2026-01-01T00:59:30Z", 60, WakeAt(30.0)),
        ("Succeeded", "2026-01-01T00:59:00Z", 60, DeleteJob(f"finished 60s ago {WHY}")),
        ("Succeeded", "2026-01-01T00:59:00Z", 0, DeleteJob(f"finished 0s ago {WHY}")),
        ("Succeeded", "2026-01-01T00:59:00Z", None, None),
        ("Succeeded", None, 60, None),
        # Only a finished job has a TTL running.
        ("Running", "2026-01-01T00:00:00Z", 60, None),
        ("Suspended", "2026-01-01T00:00:00Z", 60, None),
        (None, "2026-01-01T00:00:00Z", 60, None),
    ],
)
def test_ttl_decides(phase, finished, ttl_seconds, action) -> None:
    status = FineTuneJobStatus.model_validate({"phase": phase, "completionTime": finished})
    assert ttl.decide(ttl_seconds, status, NOW) == action
