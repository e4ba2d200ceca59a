"""The job factory: each preset is a valid job, and each step changes only what it names."""

from __future__ import annotations

import pytest

from tests.factories import MakeJob


@pytest.mark.parametrize("preset", [MakeJob, MakeJob.operator, MakeJob.trainer, MakeJob.data_stage])
def test_every_preset_is_a_valid_job(preset) -> None:
    job = preset()
    assert job.typed().spec == job.typed_spec()


def test_spec_merges_where_set_replaces() -> None:
    merged = MakeJob().spec(dataset={"train": {"source": "s3://other/t.jsonl"}}).obj()
    replaced = MakeJob().set("spec.dataset.train", {"source": "s3://other/t.jsonl"}).obj()
    assert merged["spec"]["dataset"]["train"] == {
        "source": "s3://other/t.jsonl",
        "format": "messages",
    }
    assert replaced["spec"]["dataset"]["train"] == {"source": "s3://other/t.jsonl"}


def test_set_creates_the_dicts_on_the_way() -> None:
    job = MakeJob().set_all({"spec.runPolicy.suspend": True, "metadata.labels.team": "a"}).obj()
    assert job["spec"]["runPolicy"] == {"suspend": True}
    assert job["metadata"]["labels"] == {"team": "a"}


def test_obj_is_a_fresh_copy_and_values_are_not_shared() -> None:
    policy = {"suspend": True}
    builder = MakeJob().spec(runPolicy=policy)
    first = builder.obj()
    first["spec"]["runPolicy"]["suspend"] = False
    policy["queueName"] = "late"
    assert builder.obj()["spec"]["runPolicy"] == {"suspend": True}


def test_operator_jobs_get_a_fresh_uid_each() -> None:
    first, second = MakeJob.operator().obj(), MakeJob.operator().obj()
    assert first["metadata"]["uid"] != second["metadata"]["uid"]
    assert first["metadata"]["namespace"] == "team-a"
    assert "format" not in first["spec"]["dataset"]["train"]


def test_stored_adds_what_the_api_server_adds_and_keeps_the_uid() -> None:
    builder = MakeJob.operator("x", namespace="default")
    uid = builder.obj()["metadata"]["uid"]
    assert builder.stored().obj()["metadata"] == {
        "name": "x",
        "namespace": "default",
        "uid": uid,
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    assert MakeJob().stored().obj()["metadata"]["uid"]


def test_data_stage_job_has_no_namespace() -> None:
    assert MakeJob.data_stage().obj()["metadata"] == {"name": "data-test"}
