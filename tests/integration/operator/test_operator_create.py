"""A FineTuneJob becomes a ConfigMap and a RayJob with the right content."""

from __future__ import annotations

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


async def test_create_makes_configmap_and_rayjob(cluster: Cluster, operator) -> None:
    cluster.install_kuberay()
    job = (
        MakeJob.operator("llama", namespace=NAMESPACE)
        .set("spec.resources.workers", 2)
        .set("spec.runPolicy.queueName", "team-a")
        .stored()
        .obj()
    )
    await cluster.apply_job(job)

    rayjob = await eventually(lambda: cluster.get(RAYJOBS, "llama"), what="the RayJob")
    configmap = await eventually(lambda: cluster.get("v1/configmaps", "llama-spec"))

    document = yaml.safe_load(configmap["data"]["job.yaml"])
    assert document["metadata"] == {
        "name": "llama",
        "namespace": "default",
        "uid": job["metadata"]["uid"],
    }
    assert document["spec"]["model"]["source"] == "hf://meta-llama/Llama-3.1-8B"
    assert rayjob["spec"]["entrypoint"] == "finetune run /etc/finetune/job.yaml"
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert rayjob["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2

    status = await eventually(
        lambda: cluster.status("llama").get("rayJobName") and cluster.status("llama")
    )
    assert status["phase"] == "Pending"
    assert status["reason"] == "RayJobCreated"
    assert status["observedGeneration"] == 1
    assert cluster.names(FINETUNEJOBS) == ["llama"]
    # No finalizer: a stopped operator must never block `kubectl delete`.
    metadata = cluster.get(FINETUNEJOBS, "llama")["metadata"]
    assert not metadata.get("finalizers")
    # kopf's bookkeeping lives in our own annotations (status would be pruned by the schema).
    assert all(key.startswith("finetune.io/") for key in metadata.get("annotations", {}))
