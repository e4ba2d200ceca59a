"""Run policies, each a small pure function with its own table."""

from __future__ import annotations

import datetime

import pytest
from finetune_operator.api import Phase
from finetune_operator.phases import Observation
from finetune_operator.policies import deadline, immutable, suspend, ttl

NOW = datetime.datetime(2026, 1, 1, 1, 0, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("phase", "wanted", "expected_phase", "expected_reason"),
    [
        (Phase.RUNNING, True, Phase.SUSPENDED, "Suspended"),
        (Phase.PENDING, True, Phase.SUSPENDED, "Suspended"),
        (Phase.RUNNING, False, Phase.RUNNING, "Running"),
        (Phase.SUSPENDED, False, Phase.PENDING, "Resuming"),
        (Phase.SUCCEEDED, True, Phase.SUCCEEDED, "Running"),
        (Phase.FAILED, True, Phase.FAILED, "Running"),
    ],
)
def test_suspend(phase, wanted, expected_phase, expected_reason) -> None:
    result = suspend.apply_suspend(Observation(phase, "Running", "m"), suspend=wanted)
    assert (result.phase, result.reason) == (expected_phase, expected_reason)


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
    assert deadline.seconds_left(start, limit, NOW) == left


def test_deadline_observation_names_the_field() -> None:
    observation = deadline.deadline_observation(90)
    assert (observation.phase, observation.reason) == (Phase.FAILED, "DeadlineExceeded")
    assert "activeDeadlineSeconds" in observation.message


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
    assert ttl.seconds_until_deletion(finished, ttl_seconds, NOW) == left


SPEC = {"model": {"source": "hf://a/b"}, "hyperparameters": {"epochs": 1}, "runPolicy": {}}


@pytest.mark.parametrize(
    ("change", "phase", "refused"),
    [
        ({"runPolicy": {"suspend": True}}, Phase.RUNNING, []),
        ({"hyperparameters": {"epochs": 2}}, Phase.RUNNING, ["spec.hyperparameters"]),
        ({"hyperparameters": {"epochs": 2}}, Phase.INITIALIZING, ["spec.hyperparameters"]),
        ({"hyperparameters": {"epochs": 2}}, Phase.SUSPENDED, []),
        ({"hyperparameters": {"epochs": 2}}, Phase.PENDING, []),
        ({"hyperparameters": {"epochs": 2}}, None, []),
        (
            {"model": {"source": "hf://c/d"}, "deepspeed": {"zeroStage": 3}},
            Phase.RUNNING,
            ["spec.model", "spec.deepspeed"],
        ),
    ],
)
def test_frozen_fields_while_running(change, phase, refused) -> None:
    new = {**SPEC, **change}
    assert immutable.refused_changes(SPEC, new, phase) == refused


@pytest.mark.parametrize(
    ("rayjob", "can"),
    [
        ({"spec": {"suspend": True}, "status": {"jobDeploymentStatus": "Suspended"}}, True),
        ({"spec": {"suspend": True}}, True),
        ({"spec": {"suspend": False}}, False),
        ({"spec": {"suspend": True}, "status": {"jobDeploymentStatus": "Suspending"}}, False),
        ({"spec": {"suspend": False}, "status": {"jobDeploymentStatus": "Running"}}, False),
    ],
)
def test_spec_changes_apply_only_to_a_suspended_rayjob(rayjob, can) -> None:
    assert immutable.can_apply_now(rayjob) is can
