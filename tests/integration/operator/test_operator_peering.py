"""Several replicas with `--peering NAME`: each announces itself in kopf's peering object.

Here also so that the RBAC coverage check sees the requests peering makes.
"""

from __future__ import annotations

import kmock
import pytest

from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    NAMESPACE,
    RAYJOBS,
    TEST_SETTINGS,
    Cluster,
    RunningOperator,
    eventually,
)

pytestmark = pytest.mark.integration

PEERING = "finetune-operator"
CLUSTER_PEERINGS = "kopf.dev/v1/clusterkopfpeerings"


def install_peering(cluster: Cluster) -> None:
    """kopf's peering CRD and the ClusterKopfPeering object the chart creates."""
    cluster.emulator.resources[CLUSTER_PEERINGS] = kmock.ResourceInfo(
        kind="ClusterKopfPeering", namespaced=False
    )
    cluster.emulator.objects[CLUSTER_PEERINGS, None, PEERING] = {
        "apiVersion": "kopf.dev/v1",
        "kind": "ClusterKopfPeering",
        "metadata": {"name": PEERING},
    }


def peers(cluster: Cluster) -> dict:
    stored = cluster.emulator.objects[kmock.resource(CLUSTER_PEERINGS), None, PEERING].raw
    return stored.get("status") or {}


async def test_a_peered_operator_announces_itself_and_works(cluster: Cluster) -> None:
    """Cluster-wide only: watching listed namespaces, kopf keeps a KopfPeering in each, but
    only after listing namespaces, which kmock cannot answer (see docs/rbac.md)."""
    cluster.install_kuberay()
    install_peering(cluster)
    operator = RunningOperator(cluster, TEST_SETTINGS, peering=PEERING)
    await operator.start()
    try:
        await eventually(lambda: peers(cluster), what="the operator's entry in the peering")
        await cluster.apply_job(MakeJob.operator("peered", namespace=NAMESPACE).stored().obj())
        await eventually(lambda: cluster.get(RAYJOBS, "peered"), timeout=15, what="the RayJob")
    finally:
        await operator.stop()
