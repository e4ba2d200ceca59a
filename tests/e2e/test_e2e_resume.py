"""Scenarios 2 and 3: an attempt that dies, and one that is suspended, resume from the
newest complete checkpoint in shared storage."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.e2e_cluster import EndToEnd, kill_driver
from tests.integration.operator.operator_cluster import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EVERY = 3  # E2E_SPEC's checkpointing.everySteps


async def test_killed_driver_is_retried_from_its_checkpoint(e2e: EndToEnd) -> None:
    await e2e.apply(e2e.job("retry"))
    checkpoint = await e2e.wait_checkpoint("retry")
    first = e2e.attempt("retry")
    assert first is not None and first["attempt"] == 1
    trained = max(e2e.history_steps("retry"), default=0)
    driver = kill_driver(first)
    assert driver != first["pid"], "killed the entrypoint's shell, not the driver"

    second = await eventually(
        lambda: (e2e.attempt("retry") or {}).get("attempt") == 2, timeout=120, what="attempt 2"
    )
    assert second
    assert e2e.processes_of(first["mark"]) == []  # a new cluster: nothing of the old one runs
    status = await e2e.wait_phase("retry", "Succeeded")

    assert status["attempts"] == 2
    phases = e2e.phases("retry")
    assert phases[:3] == ["Pending", "Initializing", "Running"] and phases[-1] == "Succeeded"
    assert phases.count("Running") == 2, phases  # one per attempt
    retrying = [e for e in e2e.events("retry") if e["reason"] == "Retrying"]
    # The shell reports its child's SIGKILL as 128 + 9, and Ray passes that on.
    assert retrying and "exit code 137" in retrying[0]["message"], retrying
    resumed = e2e.metrics("retry")["resumed_from_step"]
    assert resumed >= checkpoint > 0
    assert resumed >= trained - EVERY  # at most one checkpoint interval is trained again
    steps = e2e.history_steps("retry")
    assert steps == sorted(set(steps)), "a step is missing or logged twice"
    assert set(range(1, 13)) <= set(steps)
    rayjob = e2e.cluster.get("ray.io/v1/rayjobs", "retry")
    assert rayjob is not None
    assert (rayjob["status"]["failed"], rayjob["status"]["succeeded"]) == (1, 1)


async def test_suspended_job_stops_and_resumes_from_its_checkpoint(e2e: EndToEnd) -> None:
    await e2e.apply(e2e.job("pause"))
    first = await e2e.wait_checkpoint("pause")
    record = e2e.attempt("pause")
    assert record is not None

    await e2e.patch_run_policy("pause", suspend=True)
    status = await e2e.wait_phase("pause", "Suspended", timeout=60)
    assert {c["type"]: c["status"] for c in status["conditions"]}["Suspended"] == "True"

    def rayjob_suspended() -> bool:
        rayjob = e2e.cluster.get("ray.io/v1/rayjobs", "pause") or {}
        return (rayjob.get("status") or {}).get("jobDeploymentStatus") == "Suspended"

    # KubeRay writes Suspended once the cluster is gone (the job shows Suspended from Suspending).
    await eventually(rayjob_suspended, timeout=60, what="the RayJob to be Suspended")
    assert e2e.processes_of(record["mark"]) == []
    assert e2e.attempt("pause") is None
    saved = e2e.checkpoints("pause")
    await asyncio.sleep(3)
    assert e2e.checkpoints("pause") == saved, "training went on while suspended"

    await e2e.patch_run_policy("pause", suspend=False)
    await e2e.wait_phase("pause", "Succeeded")
    phases = e2e.phases("pause")
    assert phases[:4] == ["Pending", "Initializing", "Running", "Suspended"], phases
    assert phases[-2:] == ["Running", "Succeeded"], phases
    resumed = e2e.metrics("pause")["resumed_from_step"]
    assert resumed in saved and resumed >= first > 0
    steps = e2e.history_steps("pause")
    assert steps == sorted(set(steps)) and steps[-1] == 12
