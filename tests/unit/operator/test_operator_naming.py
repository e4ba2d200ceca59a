"""Deterministic child names and Event objects."""

from __future__ import annotations

import pytest
from finetune_operator import naming
from finetune_operator.events import build_event


@pytest.mark.parametrize(
    ("uri", "claim"),
    [
        ("pvc://data/train.jsonl", "data"),
        ("pvc://data", "data"),
        ("s3://bucket/x", None),
        ("/abs/path", None),
    ],
)
def test_pvc_claim(uri, claim) -> None:
    assert naming.pvc_claim(uri) == claim


@pytest.mark.parametrize("claim", ["data", "a" * 59, "a" * 60, "b" * 200])
def test_pvc_volume_names_are_labels_and_distinct(claim) -> None:
    name = naming.pvc_volume_name(claim)
    assert len(name) <= 63
    assert name[0].isalpha() and name[-1].isalnum()
    assert naming.pvc_volume_name(claim + "x") != name


def test_rayjob_name_refuses_names_kuberay_cannot_use() -> None:
    assert naming.rayjob_name("a" * 47) == "a" * 47
    with pytest.raises(ValueError, match="47"):
        naming.rayjob_name("a" * 48)


def test_event_points_at_the_job() -> None:
    job = {
        "apiVersion": "finetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": "u-1"},
    }
    event = build_event(
        job, type_="Warning", reason="InvalidSpec", message="m", now="T", instance="pod-1"
    )
    assert event["involvedObject"] == {
        "apiVersion": "finetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "j",
        "namespace": "ns",
        "uid": "u-1",
    }
    assert (event["type"], event["reason"], event["metadata"]["namespace"]) == (
        "Warning",
        "InvalidSpec",
        "ns",
    )
    other = build_event(job, type_="Normal", reason="R", message="m", now="T", instance="p")
    assert other["metadata"]["name"] != event["metadata"]["name"]
