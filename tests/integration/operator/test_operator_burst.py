"""A burst of jobs: every one gets exactly one RayJob and a status."""

from __future__ import annotations

import asyncio
import dataclasses
import time

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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST = 200


async def test_burst_of_200_jobs_all_reconciled(cluster: Cluster) -> None:
    # No resync during the burst: this measures the event-driven path alone.
    operator = RunningOperator(cluster, dataclasses.replace(TEST_SETTINGS, resync_seconds=600))
    await operator.start()
    try:
        await burst(cluster)
    finally:
        await operator.stop()


async def burst(cluster: Cluster) -> None:
    cluster.install_kuberay()
    names = [f"burst-{i:03d}" for i in range(BURST)]
    started = time.monotonic()
    jobs = [MakeJob.operator(name, namespace=NAMESPACE).stored().obj() for name in names]
    await asyncio.gather(*(cluster.apply_job(job) for job in jobs))

    def reconciled() -> bool:
        # Read without copying: the emulator shares this event loop and must not starve.
        objects = cluster.emulator.objects
        return all(
            (objects[FINETUNEJOBS, "default", name].raw.get("status") or {}).get("rayJobName")
            == name
            for name in names
        )

    await eventually(reconciled, timeout=85, what=f"{BURST} jobs reconciled", interval=0.5)
    elapsed = time.monotonic() - started
    assert cluster.names(RAYJOBS) == names
    assert cluster.creations(RAYJOBS) == BURST
    print(f"{BURST} jobs reconciled in {elapsed:.1f}s")
