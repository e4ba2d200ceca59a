"""Spec edits: frozen fields while running, when an edit reaches the children, invalid edits."""

from __future__ import annotations

import pytest
from finetune_operator.actions import ApplySpec, Fail, FollowRayJob, KeepSpec
from finetune_operator.api import FineTuneJobStatus, Phase
from finetune_operator.policies import immutable

from tests.factories import MakeJob

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


SUSPENDED = {"spec": {"suspend": True}, "status": {"jobDeploymentStatus": "Suspended"}}
RUNNING = {"spec": {"suspend": False}, "status": {"jobDeploymentStatus": "Running"}}
JOB = MakeJob.operator("edited").set("spec.resources.workers", 4).typed()
CARRIED = MakeJob.operator("edited").typed_spec().to_wire()


@pytest.mark.parametrize(
    ("carried", "phase", "rayjob", "expected"),
    [
        (JOB.spec.to_wire(), Phase.RUNNING, RUNNING, None),
        (JOB.spec.to_wire(), Phase.SUSPENDED, SUSPENDED, None),
        (CARRIED, Phase.SUSPENDED, SUSPENDED, ApplySpec),
        (CARRIED, Phase.RUNNING, RUNNING, KeepSpec),
        # Suspension asked for, the Ray cluster not yet stopped: wait for KubeRay.
        (CARRIED, Phase.SUSPENDED, {**RUNNING, "spec": {"suspend": True}}, KeepSpec),
        (CARRIED, Phase.SUCCEEDED, SUSPENDED, KeepSpec),
        (CARRIED, Phase.FAILED, SUSPENDED, KeepSpec),
    ],
)
def test_edit_reaches_the_children_only_while_suspended(carried, phase, rayjob, expected) -> None:
    decision = immutable.decide(carried, JOB, phase, rayjob)
    if expected is None:
        assert decision is None
        return
    assert isinstance(decision, expected)
    assert decision.changed == ("spec.resources",)


def test_applied_edit_says_what_changed() -> None:
    decision = immutable.decide(CARRIED, JOB, Phase.SUSPENDED, SUSPENDED)
    assert isinstance(decision, ApplySpec)
    assert (decision.event.type_, decision.event.reason) == ("Normal", "SpecApplied")
    assert decision.event.message.startswith("spec.resources changed while suspended")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"phase": "Running", "rayJobName": "j"}, FollowRayJob("j")),
        ({"phase": "Suspended", "rayJobName": "j"}, FollowRayJob("j")),
        ({}, Fail),
        ({"phase": "Pending", "reason": "KubeRayMissing"}, Fail),
    ],
)
def test_invalid_spec_fails_a_new_job_and_is_refused_for_a_started_one(status, expected) -> None:
    decision = immutable.on_invalid_spec(FineTuneJobStatus.model_validate(status), "bad field")
    if isinstance(expected, FollowRayJob):
        assert decision == expected
        return
    assert isinstance(decision, Fail)
    observation = decision.observation
    assert (observation.phase, observation.reason, observation.message) == (
        Phase.FAILED,
        "InvalidSpec",
        "bad field",
    )


EDITED = {**SPEC, "hyperparameters": {"epochs": 2}}


@pytest.mark.parametrize(
    ("status", "new", "problems", "says"),
    [
        ({"phase": "Running", "rayJobName": "j"}, EDITED, "", ["spec.hyperparameters cannot change while the job is Running"]),
        ({"phase": "Initializing", "rayJobName": "j"}, EDITED, "", ["while the job is Initializing"]),
        ({"phase": "Running", "rayJobName": "j"}, EDITED, "spec.x: bad", ["the edited spec is invalid and has no effect: spec.x: bad"]),
        # Not started: the reconcile fails the job with InvalidSpec, with its own Event.
        ({"phase": "Pending"}, EDITED, "spec.x: bad", []),
        ({"phase": "Suspended", "rayJobName": "j"}, EDITED, "", []),
        ({"phase": "Running", "rayJobName": "j"}, {**SPEC, "runPolicy": {"suspend": True}}, "", []),
        ({}, EDITED, "", []),
    ],
)  # fmt: skip
def test_edit_events(status, new, problems, says) -> None:
    events = immutable.edit_events(SPEC, new, FineTuneJobStatus.model_validate(status), problems)
    assert [(e.type_, e.reason) for e in events] == [("Warning", "SpecChangeRefused")] * len(says)
    for event, text in zip(events, says, strict=True):
        assert text in event.message
