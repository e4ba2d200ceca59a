"""One reconcile pass against an in-memory API: at most one status write, then its Events."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from finetune_operator.children import configmap_path, job_path, rayjob_path
from finetune_operator.context import Context
from finetune_operator.kube import ApiError
from finetune_operator.reconcile import reconcile
from finetune_operator.settings import Settings

from tests.factories import MakeJob
from tests.unit.operator.fake_kube import FakeKube

NS, NAME = "team-a", "llama"
JOB, RAYJOB = job_path(NS, NAME), rayjob_path(NS, NAME)


def kube_with_job(*, serves_rayjobs: bool = True, **fields: Any) -> FakeKube:
    """A FakeKube holding the job, with each dotted `spec.x.y` of `fields` set."""
    kube = FakeKube(serves_rayjobs=serves_rayjobs)
    job = MakeJob.operator(NAME, namespace=NS).set_all(fields).obj()
    job["metadata"]["generation"] = 1
    kube.put(JOB, job)
    return kube


async def one_pass(kube: FakeKube) -> Exception | None:
    """Run one pass from a clean write log; the kopf error it ends with, if any."""
    kube.writes.clear()
    context = Context(settings=Settings(trainer_image="registry.local/trainer:test"), client=kube)
    try:
        await reconcile(context, NS, NAME)
    except (kopf.TemporaryError, kopf.PermanentError) as error:
        return error
    finally:
        for handle in context.wakeups.values():
            handle.cancel()
    return None


def status(kube: FakeKube) -> dict[str, Any]:
    return (kube.objects.get(JOB) or {}).get("status") or {}


def set_rayjob(kube: FakeKube, **fields: Any) -> None:
    kube.objects[RAYJOB]["status"] = fields


def assert_one_write_then_events(kube: FakeKube) -> None:
    """The pass wrote status once, and posted its Events only after that write."""
    kinds = [
        "status" if path.endswith("/status") else "event"
        for method, path, _ in kube.writes
        if path.endswith("/status") or path.endswith("/events")
    ]
    assert kinds.count("status") == 1, kube.writes
    assert kinds.index("status") == 0, kinds


async def running(kube: FakeKube) -> None:
    await one_pass(kube)
    set_rayjob(kube, jobDeploymentStatus="Running", jobStatus="RUNNING")
    await one_pass(kube)
    assert status(kube)["phase"] == "Running"


async def test_new_job_gets_its_children_and_one_status_write() -> None:
    kube = kube_with_job()
    assert await one_pass(kube) is None
    assert RAYJOB in kube.objects and configmap_path(NS, f"{NAME}-spec") in kube.objects
    assert_one_write_then_events(kube)
    assert (status(kube)["phase"], status(kube)["reason"]) == ("Pending", "RayJobCreated")
    assert [e["reason"] for e in kube.events()] == ["RayJobCreated"]


async def test_unchanged_job_writes_nothing() -> None:
    kube = kube_with_job()
    await one_pass(kube)
    assert await one_pass(kube) is None
    assert kube.status_patches() == [] and kube.events() == []


@pytest.mark.parametrize(
    ("serves_rayjobs", "overrides", "error", "reason"),
    [
        (False, {}, kopf.TemporaryError, "KubeRayMissing"),
        (True, {"spec.dataset.train.format": "csv"}, kopf.PermanentError, "InvalidSpec"),
    ],
)
async def test_a_pass_that_stops_early_still_writes_once(
    serves_rayjobs, overrides, error, reason
) -> None:
    kube = kube_with_job(serves_rayjobs=serves_rayjobs, **overrides)
    assert isinstance(await one_pass(kube), error)
    assert_one_write_then_events(kube)
    assert status(kube)["reason"] == reason
    assert [(e["type"], e["reason"]) for e in kube.events()] == [("Warning", reason)]


async def test_foreign_rayjob_fails_the_job_in_one_write() -> None:
    kube = kube_with_job()
    kube.put(RAYJOB, {"metadata": {"name": NAME, "namespace": NS}, "spec": {}})
    assert isinstance(await one_pass(kube), kopf.PermanentError)
    assert_one_write_then_events(kube)
    assert (status(kube)["phase"], status(kube)["reason"]) == ("Failed", "NameConflict")


async def test_suspending_patches_the_rayjob_and_writes_status_once() -> None:
    kube = kube_with_job()
    await running(kube)
    kube.objects[JOB]["spec"]["runPolicy"] = {"suspend": True}
    kube.objects[JOB]["metadata"]["generation"] = 2
    assert await one_pass(kube) is None
    assert kube.objects[RAYJOB]["spec"]["suspend"] is True
    assert_one_write_then_events(kube)
    assert [e["reason"] for e in kube.events()] == ["Suspending", "Suspended"]
    assert (status(kube)["phase"], status(kube)["observedGeneration"]) == ("Suspended", 2)


async def test_spec_edited_while_suspended_is_applied_in_one_write() -> None:
    kube = kube_with_job(**{"spec.runPolicy.suspend": True})
    await one_pass(kube)
    set_rayjob(kube, jobDeploymentStatus="Suspended")
    await one_pass(kube)
    kube.objects[JOB]["spec"]["resources"] = {"workers": 4}
    kube.objects[JOB]["metadata"]["generation"] = 2
    assert await one_pass(kube) is None
    workers = kube.objects[RAYJOB]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 4
    assert_one_write_then_events(kube)
    assert [e["reason"] for e in kube.events()] == ["SpecApplied"]
    assert status(kube)["observedGeneration"] == 2


async def test_deadline_fails_the_job_and_deletes_the_rayjob_in_one_write() -> None:
    kube = kube_with_job(**{"spec.runPolicy.activeDeadlineSeconds": 60})
    await running(kube)
    kube.objects[JOB]["status"]["startTime"] = "2026-01-01T00:00:00Z"
    assert await one_pass(kube) is None
    assert RAYJOB not in kube.objects
    assert_one_write_then_events(kube)
    assert (status(kube)["phase"], status(kube)["reason"]) == ("Failed", "DeadlineExceeded")


async def test_input_the_trainer_refused_fails_the_job_and_stops_the_retries() -> None:
    kube = kube_with_job()
    await running(kube)
    message = (
        "Job entrypoint command failed with exit code 2, last available logs (truncated to "
        "20,000 chars):\nfinetune run: /etc/finetune/job.yaml: data.jsonl: 2 of 2 records are malformed\n"
    )
    set_rayjob(kube, jobDeploymentStatus="Retrying", jobStatus="FAILED", failed=1, message=message)
    assert await one_pass(kube) is None
    assert RAYJOB not in kube.objects  # KubeRay would have spent backoffLimit on it
    assert_one_write_then_events(kube)
    assert (status(kube)["phase"], status(kube)["reason"]) == ("Failed", "InvalidInput")
    assert (
        status(kube)["message"]
        == "/etc/finetune/job.yaml: data.jsonl: 2 of 2 records are malformed"
    )
    assert status(kube)["attempts"] == 1


async def test_ttl_zero_deletes_the_job_after_its_final_status() -> None:
    kube = kube_with_job(**{"spec.runPolicy.ttlSecondsAfterFinished": 0})
    await running(kube)
    set_rayjob(kube, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    assert await one_pass(kube) is None
    assert_one_write_then_events(kube)
    methods = [(method, path) for method, path, _ in kube.writes]
    assert methods[-1] == ("DELETE", JOB)
    assert JOB not in kube.objects


async def test_old_or_foreign_status_fields_do_not_stop_a_pass() -> None:
    kube = kube_with_job()
    kube.objects[JOB]["status"] = {
        "phase": "Pending",
        "attempts": "many",
        "lastCheckpointStep": 40,
        "conditions": [{"type": "Ready", "status": "True"}, "junk"],
    }
    assert await one_pass(kube) is None
    assert_one_write_then_events(kube)
    assert status(kube)["reason"] == "RayJobCreated"


async def test_a_transient_api_error_asks_kopf_to_retry_and_writes_nothing() -> None:
    kube = kube_with_job()
    create = kube.create

    async def unavailable(path: str, body: Any) -> dict[str, Any]:
        if path.endswith("/rayjobs"):
            raise ApiError(503, "POST", path, {"message": "etcd is slow"})
        return await create(path, body)

    kube.create = unavailable  # type: ignore[method-assign]
    assert isinstance(await one_pass(kube), kopf.TemporaryError)
    assert kube.status_patches() == [] and kube.events() == []
