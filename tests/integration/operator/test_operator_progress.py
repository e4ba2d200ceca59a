"""The trainer's /progress reaches FineTuneJob.status: polled off the reconcile path, written
at most once per window, robust to endpoints that are down, slow or talk nonsense, and the
final result handed over before the cluster is torn down."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from finetune_operator import api
from finetune_trainer.progress_server import (
    LINGER_ENV,
    PORT_ENV,
    ProgressBoard,
    final_result,
    serving,
)

from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    FINETUNE_CRD,
    NAMESPACE,
    TEST_SETTINGS,
    Cluster,
    RunningOperator,
    eventually,
    load_crd,
)
from tests.integration.operator.progress_endpoint import (
    ProgressEndpoint,
    contract_body,
    shared_port,
)

pytestmark = pytest.mark.integration

POLL, WRITE_WINDOW, GRACE = 0.2, 1.5, 1.0
RESULT = {"outputUri": "s3://out/x", "metrics": {"train_loss": 1.2, "eval_loss": 1.31}}


@dataclasses.dataclass
class Setup:
    cluster: Cluster
    port: int
    endpoints: list[ProgressEndpoint]

    async def endpoint(self, body: Any = None, *, listening: bool = True) -> ProgressEndpoint:
        """The next job's head address (127.0.0.2, .3, ...), serving `body` when listening."""
        host = f"127.0.0.{len(self.endpoints) + 2}"
        endpoint = ProgressEndpoint(host, self.port, body)
        self.endpoints.append(endpoint)
        return await endpoint.start() if listening else endpoint

    async def running_job(self, name: str, endpoint: ProgressEndpoint) -> None:
        """A job whose RayJob KubeRay has brought to Running, its head at `endpoint`."""
        await self.cluster.apply_job(MakeJob.operator(name, namespace=NAMESPACE).stored().obj())
        await eventually(lambda: self.cluster.status(name).get("rayJobName"), what="the RayJob")
        await self.cluster.set_rayjob_status(
            name, jobDeploymentStatus="Running", jobStatus="RUNNING",
            startTime="2026-01-01T00:00:05Z", dashboardURL=endpoint.dashboard_url,
        )  # fmt: skip
        await eventually(lambda: self.cluster.status(name).get("phase") == "Running")


@pytest.fixture
async def setup(cluster: Cluster) -> AsyncIterator[Setup]:
    cluster.install_kuberay()
    port = shared_port()
    settings = dataclasses.replace(
        TEST_SETTINGS, progress_port=port, progress_poll_seconds=POLL,
        progress_write_seconds=WRITE_WINDOW, progress_grace_seconds=GRACE,
        progress_timeout_seconds=0.5, progress_backoff_max_seconds=1.0,
        checkpoint_event_seconds=0.0,
    )  # fmt: skip
    running = RunningOperator(cluster, settings)
    await running.start()
    made = Setup(cluster, port, [])
    yield made
    await running.stop()
    for endpoint in made.endpoints:
        await endpoint.stop()


def progress(cluster: Cluster, name: str) -> dict[str, Any]:
    return cluster.status(name).get("progress") or {}


def condition(cluster: Cluster, name: str, type_: str) -> dict[str, Any]:
    found = [c for c in cluster.status(name).get("conditions", []) if c["type"] == type_]
    return found[0] if found else {}


def reasons(cluster: Cluster, name: str) -> list[str]:
    return [event["reason"] for event in cluster.events(name)]


def printer_columns(job: dict[str, Any]) -> dict[str, Any]:
    """What `kubectl get ftj` shows: each printer column's JSONPath from the generated CRD,
    evaluated against the stored object."""
    version = load_crd(FINETUNE_CRD)["spec"]["versions"][0]
    shown = {}
    for column in version["additionalPrinterColumns"]:
        value: Any = job
        for part in column["jsonPath"].strip(".").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        shown[column["name"]] = value
    return shown


async def test_progress_reaches_status_and_the_printer_columns(setup: Setup) -> None:
    endpoint = await setup.endpoint(contract_body(1200, 4000, checkpoint=1000))
    await setup.running_job("job", endpoint)
    began = time.monotonic()

    shown = await eventually(lambda: progress(setup.cluster, "job").get("display"), timeout=5)
    # The first read is due one poll interval after the job runs; the write follows it.
    assert time.monotonic() - began < POLL + 1.0
    assert shown == "1200/4000 (30%)"
    stored = progress(setup.cluster, "job")
    assert stored["step"] == 1200 and stored["trainLoss"] == 1.4213
    assert stored["eta"] == "2h05m" and stored["updatedAt"].endswith("Z")
    assert setup.cluster.status("job")["lastCheckpoint"] == {
        "step": 1000, "uri": "s3://out/ckpt/1000"
    }  # fmt: skip
    columns = printer_columns(setup.cluster.get("finetune.io/v1alpha1/finetunejobs", "job") or {})
    assert columns["Phase"] == "Running"
    assert (columns["Progress"], columns["Loss"], columns["ETA"]) == (
        "1200/4000 (30%)", 1.4213, "2h05m"
    )  # fmt: skip
    assert condition(setup.cluster, "job", "ProgressAvailable")["status"] == "True"
    # The phase conditions kubectl wait relies on are as before.
    assert condition(setup.cluster, "job", "Running")["status"] == "True"
    await eventually(
        lambda: {"TrainingStarted", "CheckpointSaved"} <= set(reasons(setup.cluster, "job"))
    )


async def test_status_writes_are_throttled_and_only_for_news(setup: Setup) -> None:
    endpoint = await setup.endpoint(contract_body(1))
    await setup.running_job("job", endpoint)
    await eventually(lambda: progress(setup.cluster, "job").get("step") == 1)
    writes = "/finetunejobs/job/status"
    before, started = setup.cluster.requests("PATCH", writes), time.monotonic()
    # New progress on every read (every 0.2 s) for 4.5 s: three write windows.
    for step in range(2, 24):
        endpoint.body = contract_body(step)
        await asyncio.sleep(POLL)
    elapsed = time.monotonic() - started
    progress_writes = setup.cluster.requests("PATCH", writes) - before
    assert 2 <= progress_writes <= elapsed // WRITE_WINDOW + 1, progress_writes
    # Nothing new: nothing written, however often it is read.
    await asyncio.sleep(WRITE_WINDOW + 0.5)
    settled = setup.cluster.requests("PATCH", writes)
    reads = endpoint.reads
    await asyncio.sleep(2 * WRITE_WINDOW)
    assert endpoint.reads > reads + 5
    assert setup.cluster.requests("PATCH", writes) == settled
    assert progress(setup.cluster, "job")["step"] == 23


async def test_bad_endpoints_neither_fail_jobs_nor_stall_the_others(setup: Setup) -> None:
    down = await setup.endpoint(listening=False)
    slow = await setup.endpoint(contract_body(5))
    slow.delay = 30.0
    garbage = await setup.endpoint(b"<html>502 Bad Gateway</html>")
    wrong = await setup.endpoint({"progress": {"step": "many"}, "lastCheckpoint": [1]})
    flood = await setup.endpoint(b" " * (3 << 20))
    healthy = await setup.endpoint(contract_body(7))
    jobs = {"down": down, "slow": slow, "garbage": garbage, "wrong": wrong, "flood": flood,
            "healthy": healthy}  # fmt: skip
    for name, endpoint in jobs.items():
        await setup.running_job(name, endpoint)
    began = time.monotonic()

    await eventually(lambda: progress(setup.cluster, "healthy").get("step") == 7, timeout=3)
    assert time.monotonic() - began < 2.0, "a bad endpoint held up a healthy job"
    expected = {
        "down": "ProgressUnreachable", "slow": "ProgressUnreachable",
        "garbage": "ProgressMalformed", "wrong": "ProgressMalformed", "flood": "ProgressMalformed",
    }  # fmt: skip
    for name, reason in expected.items():
        shown = await eventually(
            lambda name=name: condition(setup.cluster, name, "ProgressAvailable"), timeout=6,
            what=f"{name}'s ProgressAvailable condition",
        )  # fmt: skip
        assert (shown["status"], shown["reason"]) == ("False", reason), shown
        assert setup.cluster.status(name)["phase"] == "Running"
        warnings = await eventually(
            lambda name=name: [e for e in setup.cluster.events(name) if e["type"] == "Warning"]
        )
        assert [e["reason"] for e in warnings] == [reason]
    assert "no answer in time" in condition(setup.cluster, "slow", "ProgressAvailable")["message"]
    assert "not JSON" in condition(setup.cluster, "garbage", "ProgressAvailable")["message"]
    assert "progress.step" in condition(setup.cluster, "wrong", "ProgressAvailable")["message"]
    assert "larger than" in condition(setup.cluster, "flood", "ProgressAvailable")["message"]
    # Reads go on, backing off; the endpoint coming back clears the condition.
    reads = garbage.reads
    garbage.body = contract_body(9)
    await eventually(
        lambda: condition(setup.cluster, "garbage", "ProgressAvailable").get("status") == "True",
        timeout=5,
    )
    assert garbage.reads > reads
    assert progress(setup.cluster, "garbage")["step"] == 9
    await eventually(lambda: "ProgressAvailable" in reasons(setup.cluster, "garbage"))


async def test_the_result_survives_the_cluster_teardown(setup: Setup) -> None:
    endpoint = await setup.endpoint(contract_body(40, 40, eta=0.0, checkpoint=40))
    await setup.running_job("job", endpoint)
    await eventually(lambda: progress(setup.cluster, "job").get("step") == 40)
    # Training ends within the write window of the last progress: the result is not held back.
    endpoint.body = contract_body(40, 40, eta=0.0, checkpoint=40, result=RESULT)
    await asyncio.wait_for(endpoint.result_served.wait(), timeout=5)
    # The driver exits once it has served the result; KubeRay tears the cluster down at once.
    await endpoint.stop()
    await setup.cluster.set_rayjob_status(
        "job", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", endTime="2026-01-01T01:00:00Z"
    )
    status = await eventually(
        lambda: (
            setup.cluster.status("job").get("phase") == "Succeeded" and setup.cluster.status("job")
        )
    )
    assert status["result"] == RESULT
    assert status["lastCheckpoint"]["step"] == 40
    await eventually(lambda: "TrainingFinished" in reasons(setup.cluster, "job"))
    finished = [e for e in setup.cluster.events("job") if e["reason"] == "TrainingFinished"]
    assert "train_loss 1.2000, eval_loss 1.3100" in finished[0]["message"]
    # The reads stop with the job: the endpoint, back on its address, is not asked again.
    reads = endpoint.reads
    await endpoint.start()
    await asyncio.sleep(5 * POLL)
    assert endpoint.reads == reads
    assert setup.cluster.status("job")["result"] == RESULT


async def test_the_result_read_just_before_completion_is_kept(setup: Setup) -> None:
    """KubeRay may report Complete before the pass the result asked for has run: the pass
    that writes Succeeded takes the result (or waits for the read under way)."""
    endpoint = await setup.endpoint(contract_body(10, 10, eta=0.0))
    await setup.running_job("job", endpoint)
    await eventually(lambda: progress(setup.cluster, "job").get("step") == 10)
    endpoint.body = contract_body(10, 10, eta=0.0, result=RESULT)
    await asyncio.wait_for(endpoint.result_served.wait(), timeout=5)
    await setup.cluster.set_rayjob_status("job", jobDeploymentStatus="Complete",
                                          jobStatus="SUCCEEDED")  # fmt: skip
    await endpoint.stop()
    status = await eventually(
        lambda: (
            setup.cluster.status("job").get("phase") == "Succeeded" and setup.cluster.status("job")
        )
    )
    assert status["result"] == RESULT


async def test_milestones_are_posted_as_events(setup: Setup) -> None:
    endpoint = await setup.endpoint(contract_body(0, 100, loss=6.0, evalLoss=6.3, bestEvalLoss=6.3))
    await setup.running_job("job", endpoint)
    steps = [
        contract_body(1, 100, loss=5.0, evalLoss=6.3, bestEvalLoss=6.3),
        contract_body(20, 100, evalLoss=2.0, bestEvalLoss=2.0, checkpoint=20),
        contract_body(40, 100, evalLoss=2.4, bestEvalLoss=2.0, checkpoint=40),
        contract_body(60, 100, evalLoss=2.6, bestEvalLoss=2.0, checkpoint=60, earlyStopped=True),
        contract_body(60, 100, evalLoss=2.6, bestEvalLoss=2.0, checkpoint=60, earlyStopped=True,
                      result=RESULT),
    ]  # fmt: skip
    for body in steps:
        endpoint.body = body
        # Each one written before the next: past the write window.
        step = body["progress"]["step"]
        await eventually(lambda step=step: progress(setup.cluster, "job").get("step") == step,
                         timeout=WRITE_WINDOW + 3)  # fmt: skip
        await asyncio.sleep(WRITE_WINDOW)
    await eventually(lambda: setup.cluster.status("job").get("result"))
    await eventually(lambda: "TrainingFinished" in reasons(setup.cluster, "job"))
    events = [(e["reason"], e["message"]) for e in setup.cluster.events("job")]
    posted = [reason for reason, _ in events]
    assert posted.count("TrainingStarted") == 1
    assert posted.count("CheckpointSaved") == 3
    assert posted.count("EarlyStopped") == 1
    regressions = [message for reason, message in events if reason == "EvalLossRegressed"]
    assert len(regressions) == 2
    assert any("2.4000 at step 40" in m and "best so far, 2.0000" in m for m in regressions)


async def test_a_real_driver_board_is_followed_to_the_end(setup: Setup, monkeypatch) -> None:
    """The trainer's own /progress server (progress_server.serving, as `finetune run` uses it
    on the Ray head), fed history rows as the driver feeds them, then publishing its result:
    the operator follows it, and the driver leaves only once the result has been read."""
    monkeypatch.setenv(PORT_ENV, str(setup.port))
    monkeypatch.setenv(LINGER_ENV, "30")
    board, publish, left = ProgressBoard(), threading.Event(), threading.Event()

    def driver() -> None:
        with serving(board):
            board.update({"step": 0, "epoch": 0.0, "eval_loss": 6.3}, 40)
            for step in range(1, 21):
                board.update({"step": step, "epoch": step / 20, "loss": 6.0 - step / 10,
                              "tokens_per_second": 800.0}, 40)  # fmt: skip
            board.checkpointed(api.CheckpointRef(step=20, uri="/out/checkpoints/step_20"))
            publish.wait(30)
            board.update({"step": 40, "epoch": 2.0, "loss": 2.0, "tokens_per_second": 800.0,
                          "eval_loss": 2.2}, 40)  # fmt: skip
            board.finished(final_result("/out", {"train_loss": 2.0, "eval_loss": 2.2}))
        left.set()

    thread = threading.Thread(target=driver, daemon=True)
    thread.start()
    head = ProgressEndpoint("127.0.0.1", setup.port)  # only its address: the driver serves
    await setup.running_job("job", head)

    shown = await eventually(lambda: progress(setup.cluster, "job").get("step") == 20
                             and progress(setup.cluster, "job"), timeout=5)  # fmt: skip
    assert shown["display"] == "20/40 (50%)" and shown["trainLoss"] == 4.0
    assert shown["evalLoss"] == 6.3 and shown["eta"] is not None
    assert setup.cluster.status("job")["lastCheckpoint"]["step"] == 20
    publish.set()
    assert await asyncio.to_thread(left.wait, 10), "the driver kept waiting for a read"
    await setup.cluster.set_rayjob_status("job", jobDeploymentStatus="Complete",
                                          jobStatus="SUCCEEDED")  # fmt: skip
    status = await eventually(
        lambda: (
            setup.cluster.status("job").get("phase") == "Succeeded" and setup.cluster.status("job")
        )
    )
    assert status["result"] == {
        "outputUri": "/out",
        "metrics": {"train_loss": 2.0, "eval_loss": 2.2},
    }
    assert status["progress"]["display"] == "40/40 (100%)"
    thread.join(5)


async def reads_stop(endpoint: ProgressEndpoint, within: float) -> bool:
    """Whether the endpoint's reads stop within `within` seconds (and stay stopped)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        reads = endpoint.reads
        await asyncio.sleep(5 * POLL)
        if endpoint.reads == reads:
            return True
    return False


async def test_reads_stop_when_the_job_is_suspended_or_deleted(setup: Setup) -> None:
    suspended = await setup.endpoint(contract_body(3))
    deleted = await setup.endpoint(contract_body(4))
    await setup.running_job("suspended", suspended)
    await setup.running_job("deleted", deleted)
    await eventually(lambda: progress(setup.cluster, "deleted").get("step") == 4)
    await eventually(lambda: progress(setup.cluster, "suspended").get("step") == 3)

    await setup.cluster.patch_job_spec("suspended", {"runPolicy": {"suspend": True}})
    await eventually(lambda: setup.cluster.status("suspended").get("phase") == "Suspended")
    assert await reads_stop(suspended, within=3), "a suspended job's head is still read"
    path = f"/apis/finetune.io/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/deleted"
    await setup.cluster.send("DELETE", path)
    # No deletion handler: the resync (every 2 s here) finds the job gone.
    assert await reads_stop(deleted, within=6), "a deleted job's head is still read"


def retention_result(*exceeded: bool) -> dict[str, Any]:
    """A result as the trainer publishes it with evaluation.maxRetentionLossIncrease 0.5."""
    sets = [
        {"name": f"set{i}", "lossBefore": 0.7, "lossAfter": 0.7 + (2.1 if over else 0.1),
         "lossIncrease": 2.1 if over else 0.1, "exceeded": over}
        for i, over in enumerate(exceeded)
    ]  # fmt: skip
    metrics = RESULT["metrics"] | {"retention_max_loss_increase": 0.5}
    return RESULT | {"metrics": metrics, "retention": sets}


async def test_a_retention_regression_marks_the_job_and_warns(setup: Setup) -> None:
    """The result names a retention set past the threshold: the job still succeeds (the
    model was written), with RetentionRegressed True and one Warning Event; a job within
    the threshold gets the condition False and no Warning."""
    results = {"forgot": retention_result(False, True), "kept": retention_result(False, False)}
    endpoints = {}
    for name in results:
        endpoints[name] = await setup.endpoint(contract_body(40, 40, eta=0.0, checkpoint=40))
        await setup.running_job(name, endpoints[name])
    for name, result in results.items():
        endpoints[name].body = contract_body(40, 40, eta=0.0, checkpoint=40, result=result)
        await asyncio.wait_for(endpoints[name].result_served.wait(), timeout=5)
        await endpoints[name].stop()
        await setup.cluster.set_rayjob_status(name, jobDeploymentStatus="Complete",
                                              jobStatus="SUCCEEDED")  # fmt: skip
    for name in results:
        await eventually(lambda name=name: setup.cluster.status(name).get("phase") == "Succeeded")
        await eventually(lambda name=name: "TrainingFinished" in reasons(setup.cluster, name))
        assert condition(setup.cluster, name, "Succeeded")["status"] == "True"

    regressed = condition(setup.cluster, "forgot", "RetentionRegressed")
    assert (regressed["status"], regressed["reason"]) == ("True", "RetentionLossIncreased")
    assert "set1: loss 0.7000 -> 2.8000 (+2.1000)" in regressed["message"]
    assert "set0" not in regressed["message"]  # within the threshold
    assert setup.cluster.status("forgot")["result"]["retention"][1]["exceeded"] is True
    warnings = [e for e in setup.cluster.events("forgot") if e["reason"] == "RetentionRegressed"]
    assert [e["type"] for e in warnings] == ["Warning"]
    assert "maxRetentionLossIncrease 0.5" in warnings[0]["message"]

    kept = condition(setup.cluster, "kept", "RetentionRegressed")
    assert (kept["status"], kept["reason"]) == ("False", "RetentionWithinLimit")
    assert "RetentionRegressed" not in reasons(setup.cluster, "kept")
