"""Run policies: suspend and resume, deadline, TTL after finish, fields frozen while running."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    FINETUNEJOBS,
    NAMESPACE,
    RAYJOBS,
    Cluster,
    eventually,
)

pytestmark = pytest.mark.integration


async def running_job(cluster: Cluster, name: str, fields: dict | None = None) -> None:
    cluster.install_kuberay()
    await cluster.apply_job(
        MakeJob.operator(name, namespace=NAMESPACE).set_all(fields or {}).stored().obj()
    )
    await eventually(lambda: cluster.status(name).get("rayJobName"), what="the RayJob")
    await cluster.set_rayjob_status(name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    await eventually(lambda: cluster.status(name).get("phase") == "Running")


async def test_suspend_and_resume(cluster: Cluster, operator) -> None:
    await running_job(cluster, "pausable")

    await cluster.patch_job_spec("pausable", {"runPolicy": {"suspend": True}})
    await eventually(lambda: cluster.get(RAYJOBS, "pausable")["spec"]["suspend"] is True)
    status = await eventually(lambda: cluster.status("pausable").get("phase") == "Suspended")
    status = cluster.status("pausable")
    suspended = next(c for c in status["conditions"] if c["type"] == "Suspended")
    assert suspended["status"] == "True"
    assert status["observedGeneration"] == 2
    # KubeRay stops the cluster.
    await cluster.set_rayjob_status("pausable", jobDeploymentStatus="Suspended", jobStatus="")

    await cluster.patch_job_spec("pausable", {"runPolicy": {"suspend": False}})
    await eventually(lambda: cluster.get(RAYJOBS, "pausable")["spec"]["suspend"] is False)
    await eventually(lambda: cluster.status("pausable").get("reason") == "Resuming")
    # KubeRay starts a fresh cluster; the trainer resumes from its checkpoint.
    await cluster.set_rayjob_status("pausable", jobDeploymentStatus="Running", jobStatus="RUNNING")
    await eventually(lambda: cluster.status("pausable").get("phase") == "Running")
    # Events follow the pass's one status write, so they may land a moment after it.
    await eventually(
        lambda: (
            {"Suspending", "Suspended", "Resuming"}
            <= {e["reason"] for e in cluster.events("pausable")}
        ),
        what="the Suspending, Suspended and Resuming Events",
    )
    assert cluster.creations(RAYJOBS) == 1


async def test_created_suspended_job_gets_a_suspended_rayjob(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    await cluster.apply_job(
        MakeJob.operator("queued", namespace=NAMESPACE)
        .set("spec.runPolicy.suspend", True)
        .stored()
        .obj()
    )
    rayjob = await eventually(lambda: cluster.get(RAYJOBS, "queued"))
    assert rayjob["spec"]["suspend"] is True
    await eventually(lambda: cluster.status("queued").get("phase") == "Suspended")


async def test_deadline_fails_the_job_and_stops_the_cluster(cluster: Cluster, operator) -> None:
    await running_job(cluster, "slow", {"spec.runPolicy.activeDeadlineSeconds": 2})

    status = await eventually(
        lambda: cluster.status("slow").get("phase") == "Failed", timeout=6, what="the deadline"
    )
    status = cluster.status("slow")
    assert status["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds" in status["message"]
    assert cluster.get(RAYJOBS, "slow") is None  # the Ray cluster's GPUs are freed


async def test_ttl_deletes_the_finished_job(cluster: Cluster, operator) -> None:
    await running_job(cluster, "done", {"spec.runPolicy.ttlSecondsAfterFinished": 1})
    await cluster.set_rayjob_status("done", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    await eventually(lambda: cluster.status("done").get("phase") == "Succeeded")
    assert cluster.get(FINETUNEJOBS, "done") is not None

    await eventually(lambda: cluster.get(FINETUNEJOBS, "done") is None, timeout=5, what="TTL")
    # kmock has no garbage collector: the children stay, with ownerReferences that let a real
    # cluster's collector remove them.
    owner = cluster.get(RAYJOBS, "done")["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == ("FineTuneJob", "done", True)


async def test_job_without_ttl_stays(cluster: Cluster, operator) -> None:
    await running_job(cluster, "kept")
    await cluster.set_rayjob_status("kept", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    await eventually(lambda: cluster.status("kept").get("phase") == "Succeeded")
    await asyncio.sleep(2.5)  # past one resync
    assert cluster.get(FINETUNEJOBS, "kept") is not None


async def test_frozen_field_change_while_running_is_refused(cluster: Cluster, operator) -> None:
    await running_job(cluster, "frozen")
    before = cluster.get(RAYJOBS, "frozen")
    configmap = cluster.get("v1/configmaps", "frozen-spec")

    # kmock evaluates no CEL, so the change is stored, as a cluster without the rule would.
    await cluster.patch_job_spec("frozen", {"hyperparameters": {"learningRate": 0.1}})
    event = await eventually(
        lambda: [e for e in cluster.events("frozen") if e["reason"] == "SpecChangeRefused"]
    )
    assert event[0]["type"] == "Warning"
    assert "spec.hyperparameters" in event[0]["message"]
    await asyncio.sleep(0.5)
    assert cluster.get(RAYJOBS, "frozen") == before
    assert cluster.get("v1/configmaps", "frozen-spec") == configmap
    assert cluster.status("frozen")["observedGeneration"] == 1  # the change was not acted on
    assert cluster.status("frozen")["phase"] == "Running"


async def test_spec_edited_while_suspended_applies_on_resume(cluster: Cluster, operator) -> None:
    await running_job(cluster, "edited")
    await cluster.patch_job_spec("edited", {"runPolicy": {"suspend": True}})
    await cluster.set_rayjob_status("edited", jobDeploymentStatus="Suspended", jobStatus="")
    await eventually(lambda: cluster.status("edited").get("phase") == "Suspended")

    await cluster.patch_job_spec("edited", {"resources": {"workers": 4}})
    await eventually(
        lambda: (
            cluster.get(RAYJOBS, "edited")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0][
                "replicas"
            ]
            == 4
        ),
        what="the RayJob rebuilt from the edited spec",
    )
    document = yaml.safe_load(cluster.get("v1/configmaps", "edited-spec")["data"]["job.yaml"])
    assert document["spec"]["resources"]["workers"] == 4
    await eventually(lambda: cluster.status("edited").get("observedGeneration") == 3)
    await eventually(
        lambda: "SpecApplied" in {e["reason"] for e in cluster.events("edited")},
        what="the SpecApplied Event, posted after the status write",
    )
    assert cluster.get(RAYJOBS, "edited")["spec"]["suspend"] is True
    assert cluster.creations(RAYJOBS) == 1


async def test_invalid_edit_of_a_running_job_is_refused(cluster: Cluster, operator) -> None:
    await running_job(cluster, "broken")
    await cluster.patch_job_spec("broken", {"dataset": {"train": {"format": "csv"}}})
    event = await eventually(
        lambda: [e for e in cluster.events("broken") if e["reason"] == "SpecChangeRefused"]
    )
    assert "spec.dataset.train.format" in event[0]["message"]
    # The job keeps following its RayJob, built from the earlier, valid spec.
    await cluster.set_rayjob_status("broken", jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    await eventually(lambda: cluster.status("broken").get("phase") == "Succeeded")
    assert cluster.status("broken")["observedGeneration"] == 1
