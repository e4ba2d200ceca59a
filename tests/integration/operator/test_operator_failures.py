"""Bad input, a missing KubeRay, foreign objects, API errors and restarts."""

from __future__ import annotations

import asyncio

import kmock
import pytest
from finetune_operator.builders import build_rayjob
from finetune_operator.validation import parse_job

from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    FINETUNEJOBS,
    NAMESPACE,
    RAYJOBS,
    TEST_SETTINGS,
    Cluster,
    OperatorProcess,
    RunningOperator,
    eventually,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"spec.dataset.train.format": "csv"}, "spec.dataset.train.format"),
        ({"spec.evaluation.metrics": ["bleu"]}, "spec.evaluation.metrics"),
        ({"spec.resources.memoryPerWorker": "lots"}, "spec.resources.memoryPerWorker"),
    ],
    ids=["enum", "cel-rule", "pattern"],
)
async def test_invalid_spec_fails_with_the_field_named(
    cluster: Cluster, operator, overrides, field
) -> None:
    # kmock evaluates no schema or CEL, so the invalid object is stored as a lax API would.
    cluster.install_kuberay()
    await cluster.apply_job(
        MakeJob.operator("bad", namespace=NAMESPACE).set_all(overrides).stored().obj()
    )

    status = await eventually(lambda: cluster.status("bad").get("phase") and cluster.status("bad"))
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert field in status["message"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True"
    event = await eventually(lambda: cluster.events("bad"), what="the Warning Event")
    assert (event[0]["type"], event[0]["reason"]) == ("Warning", "InvalidSpec")
    assert field in event[0]["message"]
    assert cluster.names(RAYJOBS) == []
    assert cluster.names("v1/configmaps") == []


async def test_waits_for_kuberay_then_proceeds_by_itself(cluster: Cluster, operator) -> None:
    await cluster.apply_job(MakeJob.operator("early", namespace=NAMESPACE).stored().obj())

    status = await eventually(lambda: cluster.status("early").get("reason") == "KubeRayMissing")
    status = cluster.status("early")
    assert status["phase"] == "Pending"
    assert "install the KubeRay operator" in status["message"]
    assert cluster.names(RAYJOBS) == []
    event = await eventually(lambda: cluster.events("early"))
    assert event[0]["reason"] == "KubeRayMissing"

    await cluster.install_kuberay_crd()
    await eventually(lambda: cluster.get(RAYJOBS, "early"), what="the RayJob after install")
    status = await eventually(lambda: cluster.status("early").get("reason") == "RayJobCreated")
    assert cluster.status("early")["rayJobName"] == "early"


async def test_same_named_foreign_rayjob_is_never_adopted(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    foreign = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": "taken", "namespace": "default", "labels": {"team": "other"}},
        "spec": {"entrypoint": "python theirs.py"},
    }
    await cluster.send("POST", "/apis/ray.io/v1/namespaces/default/rayjobs", foreign)
    await cluster.apply_job(MakeJob.operator("taken", namespace=NAMESPACE).stored().obj())

    status = await eventually(lambda: cluster.status("taken").get("phase") == "Failed")
    status = cluster.status("taken")
    assert status["reason"] == "NameConflict"
    assert "RayJob named taken" in status["message"]
    assert cluster.get(RAYJOBS, "taken") == foreign  # neither adopted nor overwritten


async def test_503_after_the_create_was_stored_makes_one_rayjob(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    answered = []

    def unavailable_once() -> object:
        # kmock has stored the object by now; the client only sees the error.
        if answered:
            return None  # later requests are served as usual
        answered.append(True)
        return kmock.KubernetesError(503, "ServiceUnavailable", "etcd is slow")

    cluster.emulator[kmock.method.POST, kmock.resource(RAYJOBS)] << unavailable_once
    await cluster.apply_job(MakeJob.operator("flaky", namespace=NAMESPACE).stored().obj())

    await eventually(lambda: cluster.status("flaky").get("rayJobName"), what="recovery")
    assert answered == [True]
    assert cluster.names(RAYJOBS) == ["flaky"]
    assert cluster.creations(RAYJOBS) == 1


async def test_killed_mid_handler_then_restarted_makes_no_duplicate(
    cluster: Cluster, tmp_path
) -> None:
    cluster.install_kuberay()
    first = OperatorProcess(cluster, tmp_path)
    second = OperatorProcess(cluster, tmp_path)
    killed = []

    def kill_while_creating() -> None:
        # The RayJob is stored; the operator dies before it hears back or writes status.
        first.kill()
        killed.append(True)

    cluster.emulator[kmock.method.POST, kmock.resource(RAYJOBS)] << kill_while_creating
    await first.start()
    try:
        await cluster.apply_job(MakeJob.operator("restart", namespace=NAMESPACE).stored().obj())
        await eventually(lambda: killed, timeout=15, what="the kill")
        assert cluster.get(RAYJOBS, "restart") is not None
        assert not cluster.status("restart").get("rayJobName")

        await second.start()
        await eventually(lambda: cluster.status("restart").get("rayJobName"), what="resume")
    finally:
        first.kill()
        second.terminate()
    assert cluster.names(RAYJOBS) == ["restart"]
    assert cluster.creations(RAYJOBS) == 1


async def test_restart_keeps_status_and_children(cluster: Cluster) -> None:
    cluster.install_kuberay()
    first = RunningOperator(cluster, TEST_SETTINGS)
    await first.start()
    await cluster.apply_job(MakeJob.operator("steady", namespace=NAMESPACE).stored().obj())
    await eventually(lambda: cluster.status("steady").get("rayJobName"))
    await cluster.set_rayjob_status("steady", jobDeploymentStatus="Running", jobStatus="RUNNING")
    await eventually(lambda: cluster.status("steady").get("phase") == "Running")
    before = cluster.status("steady")
    await first.stop()

    second = RunningOperator(cluster, TEST_SETTINGS)
    await second.start()
    try:
        await asyncio.sleep(1.0)  # resume handlers and the RayJob watch replay have run
    finally:
        await second.stop()
    assert cluster.status("steady") == before
    assert cluster.creations(RAYJOBS) == 1
    assert cluster.creations("v1/configmaps") == 1
    assert cluster.names(FINETUNEJOBS) == ["steady"]


async def test_rayjob_of_a_deleted_namesake_is_waited_for(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    leftover = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            "name": "again",
            "namespace": "default",
            "ownerReferences": [
                {"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob", "name": "again",
                 "uid": "uid-of-the-deleted-job", "controller": True},
            ],
        },
        "spec": {"entrypoint": "finetune run /etc/finetune/job.yaml"},
    }  # fmt: skip
    await cluster.send("POST", "/apis/ray.io/v1/namespaces/default/rayjobs", leftover)
    job = MakeJob.operator("again", namespace=NAMESPACE).stored().obj()
    await cluster.apply_job(job)

    await eventually(lambda: cluster.status("again").get("reason") == "PreviousJobTerminating")
    assert cluster.status("again")["phase"] == "Pending"

    # The garbage collector removes the old RayJob; the new job proceeds by itself.
    await cluster.send("DELETE", "/apis/ray.io/v1/namespaces/default/rayjobs/again")
    rayjob = await eventually(
        lambda: (cluster.get(RAYJOBS, "again") or {}).get("spec", {}).get("rayClusterSpec"),
        what="the new RayJob",
    )
    assert rayjob
    owner = cluster.get(RAYJOBS, "again")["metadata"]["ownerReferences"][0]
    assert owner["uid"] == job["metadata"]["uid"]


async def test_409_for_our_own_rayjob_counts_as_created(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    job = MakeJob.operator("raced", namespace=NAMESPACE).stored().obj()
    # An earlier attempt already created the RayJob, but the lookup misses it once (a stale
    # cache or a slow replica), so the create answers 409 Conflict.
    ours = build_rayjob(parse_job(job), TEST_SETTINGS)
    await cluster.send("POST", "/apis/ray.io/v1/namespaces/default/rayjobs", ours)
    missed = []

    def not_found_once() -> object:
        if missed:
            return None
        missed.append(True)
        return kmock.KubernetesNotFoundError()

    cluster.emulator[kmock.method.GET, kmock.resource(RAYJOBS), kmock.name("raced")] << (
        not_found_once
    )
    await cluster.apply_job(job)

    status = await eventually(lambda: cluster.status("raced").get("rayJobName") and True)
    assert status
    assert missed == [True]
    assert cluster.creations(RAYJOBS) == 2  # ours above, and the operator's one 409
    assert cluster.names(RAYJOBS) == ["raced"]
    assert cluster.status("raced")["phase"] == "Pending"


async def test_a_rayjob_the_api_server_refuses_fails_the_job_once(
    cluster: Cluster, operator
) -> None:
    cluster.install_kuberay()
    cause = {
        "reason": "FieldValueInvalid",
        "field": "spec.activeDeadlineSeconds",
        "message": "Invalid value: 2147483648: must be less than or equal to 2147483647",
    }
    cluster.emulator[kmock.method.POST, kmock.resource(RAYJOBS)] << (
        lambda: kmock.KubernetesError(422, "Invalid", "RayJob is invalid", {"causes": [cause]})
    )
    await cluster.apply_job(MakeJob.operator("refused", namespace=NAMESPACE).stored().obj())

    status = await eventually(
        lambda: cluster.status("refused").get("phase") and cluster.status("refused")
    )
    assert (status["phase"], status["reason"]) == ("Failed", "ChildRejected")
    assert f"spec.activeDeadlineSeconds: {cause['message']}" in status["message"]
    event = await eventually(lambda: cluster.events("refused"), what="the Warning Event")
    assert (event[0]["type"], event[0]["reason"]) == ("Warning", "ChildRejected")
    await asyncio.sleep(2 * TEST_SETTINGS.retry_seconds + 0.5)  # a retry would have come by now
    assert cluster.creations(RAYJOBS) == 1
