"""Children: ours only by a controller ownerReference to this job's uid; found, created, rebuilt."""

from __future__ import annotations

import pytest
import yaml
from finetune_operator import children
from finetune_operator.settings import Settings

from tests.factories import MakeJob
from tests.unit.operator.fake_kube import FakeKube

JOB = MakeJob.operator("llama").typed()
UID = JOB.metadata.uid
SETTINGS = Settings(trainer_image="registry.local/trainer:test")


def owned(name: str = "llama", uid: str | None = UID, controller: bool = True, **meta) -> dict:
    reference = {"kind": "FineTuneJob", "name": name, "uid": uid, "controller": controller}
    return {"metadata": {"ownerReferences": [reference], **meta}}


@pytest.mark.parametrize(
    ("obj", "ours", "predecessor"),
    [
        (owned(), True, True),
        (owned(uid="uid-of-a-deleted-job"), False, True),
        (owned(controller=False), False, False),
        (owned(name="other"), False, False),
        ({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}, False, True),
        ({"metadata": {}}, False, False),
        ({}, False, False),
    ],
)
def test_ownership(obj, ours, predecessor) -> None:
    assert children.is_owned_by(obj, JOB) is ours
    assert children.is_left_by_predecessor(obj, JOB) is predecessor


async def test_children_are_created_once_then_found() -> None:
    kube = FakeKube()
    first = await children.ensure_children(kube, JOB, SETTINGS)
    again = await children.ensure_children(kube, JOB, SETTINGS)
    assert first == again
    assert [method for method, _, _ in kube.writes] == ["POST", "POST"]
    assert [c["kind"] for c in first] == ["ConfigMap", "RayJob"]


@pytest.mark.parametrize(
    ("existing", "error"),
    [
        ({"metadata": {"name": "llama"}}, children.NameConflict),
        ({**owned(uid="uid-of-a-deleted-job"), "kind": "RayJob"}, children.PredecessorPending),
    ],
)
async def test_a_foreign_rayjob_is_refused(existing, error) -> None:
    kube = FakeKube()
    kube.put(children.rayjob_path("team-a", "llama"), existing)
    with pytest.raises(error):
        await children.ensure_children(kube, JOB, SETTINGS)
    assert kube.objects[children.rayjob_path("team-a", "llama")] == existing


async def test_rebuild_rewrites_both_children_from_the_spec() -> None:
    kube = FakeKube()
    configmap, _ = await children.ensure_children(kube, JOB, SETTINGS)
    edited = MakeJob.operator("llama").set("spec.resources.workers", 4).typed()
    rayjob = await children.rebuild_children(kube, edited, SETTINGS)
    assert rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 4
    stored = kube.objects[children.configmap_path("team-a", "llama-spec")]
    assert children.carried_spec(stored)["resources"]["workers"] == 4
    assert children.carried_spec(configmap) == JOB.spec.to_wire()


@pytest.mark.parametrize(
    "data",
    [{}, {"job.yaml": ""}, {"job.yaml": "just text"}, {"job.yaml": yaml.safe_dump({"spec": None})}],
)
def test_carried_spec_of_an_odd_configmap_is_none(data) -> None:
    assert children.carried_spec({"data": data}) is None
