"""RayJob status, as KubeRay writes it, shows in the FineTuneJob's phase, conditions and Events."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    NAMESPACE,
    RAYJOBS,
    Cluster,
    eventually,
)

pytestmark = pytest.mark.integration


def true_conditions(status: dict[str, Any]) -> list[str]:
    return [c["type"] for c in status.get("conditions", []) if c["status"] == "True"]


async def started_job(cluster: Cluster, name: str) -> None:
    cluster.install_kuberay()
    await cluster.apply_job(MakeJob.operator(name, namespace=NAMESPACE).stored().obj())
    await eventually(lambda: cluster.status(name).get("rayJobName"), what="the RayJob")


@pytest.mark.parametrize(
    ("rayjob_status", "phase", "reason", "condition", "attempts"),
    [
        ({"jobDeploymentStatus": "Initializing"}, "Initializing", "Initializing", None, 1),
        (
            {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"},
            "Running", "Running", "Running", 1,
        ),
        (
            {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "succeeded": 1},
            "Succeeded", "Completed", "Succeeded", 1,
        ),
        (
            {
                "jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed",
                "message": "Traceback: CUDA out of memory", "failed": 3,
            },
            "Failed", "AppFailed", "Failed", 3,
        ),
        (
            {"jobDeploymentStatus": "Retrying", "jobStatus": "FAILED", "failed": 1},
            "Initializing", "Retrying", None, 2,
        ),
        # Ray still says RUNNING, KubeRay already failed the RayJob: KubeRay decides.
        (
            {
                "jobDeploymentStatus": "Failed", "jobStatus": "RUNNING",
                "reason": "DeadlineExceeded", "message": "activeDeadlineSeconds passed",
            },
            "Failed", "DeadlineExceeded", "Failed", 1,
        ),
    ],
    ids=["initializing", "running", "complete", "failed", "retrying", "running-but-failed"],
)  # fmt: skip
async def test_rayjob_status_becomes_job_status(
    cluster: Cluster, operator, rayjob_status, phase, reason, condition, attempts
) -> None:
    await started_job(cluster, "job")
    await cluster.set_rayjob_status("job", startTime="2026-01-01T00:00:05Z", **rayjob_status)

    status = await eventually(
        lambda: cluster.status("job").get("phase") == phase and cluster.status("job"),
        what=f"phase {phase}",
    )
    assert status["reason"] == reason
    assert true_conditions(status) == ([condition] if condition else [])
    assert status["attempts"] == attempts
    assert status["startTime"] == "2026-01-01T00:00:05Z"
    if rayjob_status.get("message"):
        assert rayjob_status["message"] in status["message"]
    if phase in ("Succeeded", "Failed"):
        assert status["completionTime"]
    events = await eventually(
        lambda: [e for e in cluster.events("job") if e["reason"] == reason], what="the Event"
    )
    assert events[0]["type"] == ("Warning" if phase == "Failed" else "Normal")


async def test_a_whole_run_moves_through_the_phases(cluster: Cluster, operator) -> None:
    await started_job(cluster, "run")
    for deployment, ray, phase in [
        ("Initializing", "", "Initializing"),
        ("Running", "RUNNING", "Running"),
        ("Complete", "SUCCEEDED", "Succeeded"),
    ]:
        await cluster.set_rayjob_status("run", jobDeploymentStatus=deployment, jobStatus=ray)
        await eventually(lambda phase=phase: cluster.status("run").get("phase") == phase)

    status = cluster.status("run")
    running = next(c for c in status["conditions"] if c["type"] == "Running")
    assert running["status"] == "False"
    wanted = {"RayJobCreated", "Initializing", "Running", "Completed"}
    await eventually(
        lambda: wanted <= {e["reason"] for e in cluster.events("run")}, what="an Event per phase"
    )
    # A finished job stays finished whatever the RayJob says later.
    await cluster.set_rayjob_status("run", jobDeploymentStatus="Running", jobStatus="RUNNING")
    await cluster.set_rayjob_status("run", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    assert cluster.status("run")["phase"] == "Succeeded"
    assert cluster.get(RAYJOBS, "run") is not None


async def test_status_is_written_only_when_it_changes(cluster: Cluster, operator) -> None:
    await started_job(cluster, "quiet")
    await cluster.set_rayjob_status("quiet", jobDeploymentStatus="Running", jobStatus="RUNNING")
    await eventually(lambda: cluster.status("quiet").get("phase") == "Running")

    def status_writes() -> int:
        return cluster.requests("PATCH", "/finetunejobs/quiet/status")

    before = status_writes()
    # The same status again, and a field that does not matter to the job (the dashboard URL).
    await cluster.set_rayjob_status("quiet", jobDeploymentStatus="Running", dashboardURL="x:8265")
    await cluster.set_rayjob_status("quiet", jobDeploymentStatus="Running", jobStatus="RUNNING")
    await asyncio.sleep(0.5)
    assert status_writes() == before
