"""A spec the children cannot be made of ends the job once: Failed, a reason, a message
naming the field, a Warning Event; never a retry loop with no phase."""

from __future__ import annotations

import kopf
import pytest
from finetune_operator.children import configmap_path, rayjob_path
from finetune_operator.context import Context

from tests.unit.operator.test_operator_reconcile_pass import (
    NAME,
    NS,
    kube_with_job,
    one_pass,
    status,
)

FIELD_LIMIT = "Invalid value: 2147483648: must be less than or equal to 2147483647"

# (id, collection that refuses creates, field named, what the status message must contain)
REJECTED = [
    ("RayJob", rayjob_path(NS), "spec.activeDeadlineSeconds",
     f"the API server refused the RayJob {NAME}: spec.activeDeadlineSeconds: {FIELD_LIMIT}"),
    ("ConfigMap", configmap_path(NS), "data",
     f"the API server refused the ConfigMap {NAME}-spec: data: {FIELD_LIMIT}"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("collection", "field", "expected"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
async def test_a_child_the_api_server_refuses_fails_the_job_once(
    collection, field, expected
) -> None:
    kube = kube_with_job()
    kube.reject(collection, field, FIELD_LIMIT)
    assert isinstance(await one_pass(kube), kopf.PermanentError)
    assert (status(kube)["phase"], status(kube)["reason"]) == ("Failed", "ChildRejected")
    assert status(kube)["message"] == expected
    assert [(e["type"], e["reason"]) for e in kube.events()] == [("Warning", "ChildRejected")]
    assert await one_pass(kube) is None and kube.writes == []  # finished: no retry


def long_name(job):
    job.metadata.name = "n" * 60


def huge_cpu_count(job):
    job.spec.resources.cpus_per_worker = 10**5000


# (id, how the typed job is changed after validation, what the status message must contain)
UNBUILDABLE = [
    ("name past the RayJob's limit", long_name, f"job name '{'n' * 60}' is longer than 47 characters"),
    ("integer too long to write", huge_cpu_count, "Exceeds the limit (4300 digits) for integer string conversion"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "expected"), [r[1:] for r in UNBUILDABLE], ids=[r[0] for r in UNBUILDABLE]
)
async def test_a_spec_no_child_can_be_built_from_fails_the_job_once(
    monkeypatch, change, expected
) -> None:
    """A spec that slipped through validation: the builders' ValueError fails the job."""
    parse = Context.parse

    def slipped_through(self, manifest):
        job = parse(self, manifest).model_copy(deep=True)
        change(job)
        return job

    monkeypatch.setattr(Context, "parse", slipped_through)
    kube = kube_with_job()
    assert isinstance(await one_pass(kube), kopf.PermanentError)
    assert (status(kube)["phase"], status(kube)["reason"]) == ("Failed", "InvalidSpec")
    assert "cannot be built into a RayJob" in status(kube)["message"]
    assert expected in status(kube)["message"]
    assert [(e["type"], e["reason"]) for e in kube.events()] == [("Warning", "InvalidSpec")]
    assert [m for m, path, _ in kube.writes if not path.endswith(("/status", "/events"))] == []
    assert await one_pass(kube) is None and kube.writes == []
