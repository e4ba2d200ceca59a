"""Which jobs the operator sees, and the resync that catches what a watch missed."""

from __future__ import annotations

import asyncio

import pytest

from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    FINETUNEJOBS,
    NAMESPACE,
    RAYJOBS,
    TEST_SETTINGS,
    Cluster,
    RunningOperator,
    eventually,
)

pytestmark = pytest.mark.integration


async def test_namespace_flag_limits_what_the_operator_sees(cluster: Cluster) -> None:
    cluster.install_kuberay()
    cluster.add_namespace("team-b")
    operator = RunningOperator(cluster, TEST_SETTINGS, namespaces=("team-b",))
    await operator.start()
    try:
        ours = MakeJob.operator("ours", namespace="team-b").stored().obj()
        await cluster.apply_job(ours)
        theirs = MakeJob.operator("theirs", namespace=NAMESPACE).stored().obj()
        await cluster.apply_job(theirs)  # in "default"
        await eventually(lambda: cluster.get(RAYJOBS, "ours", "team-b"), what="our RayJob")
        await asyncio.sleep(TEST_SETTINGS.resync_seconds + 0.5)  # a resync has passed too
    finally:
        await operator.stop()
    assert cluster.get(RAYJOBS, "theirs") is None
    assert not (cluster.get(FINETUNEJOBS, "theirs") or {}).get("status")


async def test_resync_catches_a_change_no_watch_reported(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    await cluster.apply_job(MakeJob.operator("missed", namespace=NAMESPACE).stored().obj())
    await eventually(lambda: cluster.status("missed").get("rayJobName"))

    # Change the RayJob behind the API's back: no watch event, as after a dropped watch.
    stored = cluster.emulator.objects[RAYJOBS, "default", "missed"]
    stored.patch({"status": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}})

    await eventually(
        lambda: cluster.status("missed").get("phase") == "Running",
        timeout=TEST_SETTINGS.resync_seconds * 3,
        what="the periodic resync",
    )
