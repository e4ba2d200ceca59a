"""Scenarios 4 and 6: the operator killed mid-run, and a running job deleted."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.e2e_cluster import EndToEnd
from tests.integration.operator.operator_cluster import RAYJOBS, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


async def test_operator_killed_mid_run_comes_back_to_one_rayjob(e2e: EndToEnd) -> None:
    await e2e.apply(e2e.job("steady"))
    await e2e.wait_phase("steady", "Running")
    e2e.operator.kill()
    await asyncio.sleep(5)  # the run goes on without its operator
    await e2e.operator.start()

    status = await e2e.wait_phase("steady", "Succeeded")

    assert e2e.cluster.names(RAYJOBS) == ["steady"]
    assert e2e.cluster.creations(RAYJOBS) == 1
    assert e2e.cluster.creations("v1/configmaps") == 1
    assert status["attempts"] == 1
    assert e2e.phases("steady")[-1] == "Succeeded"
    assert e2e.metrics("steady")["resumed_from_step"] == 0  # the run itself never stopped


async def test_deleted_job_takes_its_rayjob_and_attempt_with_it(e2e: EndToEnd) -> None:
    await e2e.apply(e2e.job("doomed"))
    await e2e.wait_phase("doomed", "Running")
    record = await eventually(lambda: e2e.attempt("doomed"), timeout=60, what="the attempt")
    assert e2e.processes_of(record["mark"])

    await e2e.delete("doomed")

    await eventually(lambda: not e2e.cluster.names(RAYJOBS), timeout=30, what="the RayJob to go")
    await eventually(
        lambda: not e2e.cluster.names("v1/configmaps"), timeout=30, what="the ConfigMap to go"
    )
    await eventually(
        lambda: not e2e.processes_of(record["mark"]), timeout=30, what="the attempt to stop"
    )
    assert e2e.attempt("doomed") is None
