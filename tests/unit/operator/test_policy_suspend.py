"""runPolicy.suspend: the observation it gives the job, and when it patches the RayJob."""

from __future__ import annotations

import pytest
from finetune_operator.actions import Event, PatchRayJob
from finetune_operator.api import Phase
from finetune_operator.phases import Observation
from finetune_operator.policies import suspend


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


SUSPEND = PatchRayJob(
    {"spec": {"suspend": True}},
    Event("Normal", "Suspending", "spec.runPolicy.suspend is true: stopping the Ray cluster"),
)
RESUME = PatchRayJob(
    {"spec": {"suspend": False}},
    Event("Normal", "Resuming", "spec.runPolicy.suspend is false: restarting the Ray cluster"),
)


@pytest.mark.parametrize(
    ("rayjob_suspend", "deployment", "wanted", "action"),
    [
        (False, "Running", True, SUSPEND),
        (None, "", True, SUSPEND),
        (True, "Suspended", False, RESUME),
        (True, "Suspending", False, RESUME),
        (False, "Running", False, None),
        (True, "Suspended", True, None),
        # KubeRay is done with it: a finished RayJob is left as it ended.
        (False, "Complete", True, None),
        (False, "Failed", True, None),
        (False, "ValidationFailed", True, None),
        # A status KubeRay does not define is not an end.
        (False, "Exploding", True, SUSPEND),
    ],
)
def test_suspend_decides_the_rayjob_patch(rayjob_suspend, deployment, wanted, action) -> None:
    rayjob = {
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {} if rayjob_suspend is None else {"suspend": rayjob_suspend},
        "status": {"jobDeploymentStatus": deployment},
    }
    assert suspend.decide(rayjob, wanted) == action
