"""Scenarios 4 and 6: the operator killed mid-run, and a running job deleted."""

from __future__ import annotations

import asyncio

import pytest

from tests.e2e.e2e_cluster import EndToEnd
from tests.factories import MakeJob
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


async def test_deleted_job_goes_with_its_rayjob_and_attempt_and_a_namesake_starts_afresh(
    e2e: EndToEnd,
) -> None:
    old = e2e.job("doomed")
    await e2e.apply(old)
    await e2e.wait_checkpoint("doomed")
    record = e2e.attempt("doomed")
    assert record is not None and e2e.processes_of(record["mark"])

    await e2e.delete("doomed")

    await eventually(lambda: not e2e.cluster.names(RAYJOBS), timeout=30, what="the RayJob to go")
    await eventually(
        lambda: not e2e.cluster.names("v1/configmaps"), timeout=30, what="the ConfigMap to go"
    )
    # The stand-in forgets an attempt (its record) only once none of its processes is left.
    await eventually(lambda: e2e.attempt("doomed") is None, timeout=30, what="the attempt to stop")
    assert e2e.processes_of(record["mark"]) == []

    # Same name, same output, a new uid: a new run, never the deleted job's checkpoints.
    new = e2e.job("doomed")
    await e2e.apply(new)
    await e2e.wait_phase("doomed", "Succeeded")
    assert e2e.metrics("doomed")["resumed_from_step"] == 0
    runs = {p.name for p in (e2e.output("doomed") / "checkpoints").iterdir() if p.is_dir()}
    assert {run_of(old), run_of(new)} <= runs, runs  # each job its own run (name + uid)
    steps = e2e.history_steps("doomed")
    assert steps == sorted(set(steps)) and steps[-1] == 12


def run_of(job: MakeJob) -> str:
    """The trainer's run name: the job's name and the first 8 characters of its uid."""
    metadata = job.obj()["metadata"]
    return f"{metadata['name']}-{metadata['uid'].replace('-', '')[:8]}"
