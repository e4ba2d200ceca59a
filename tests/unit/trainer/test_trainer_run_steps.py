"""`finetune run`'s steps before training: plan_run and prepare_data, and /progress serving."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from finetune_trainer.progress_server import PORT_ENV, ProgressBoard, serving
from finetune_trainer.run import plan_run, prepare_data

from tests.factories import MakeJob, write_job


def test_plan_then_data_write_the_splits_and_one_complete_data_report(job_dir, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    plan = plan_run(write_job(job_dir, MakeJob.trainer().obj()), output=None, workers=1)
    assert plan.local and plan.workers.num_workers == 1
    assert plan.model_dir == job_dir / "model"
    out = job_dir / "out"
    assert plan.checkpoint_uri(2) == f"{out}/checkpoints/tiny/checkpoint_step_00000002"
    assert not out.exists()  # planning writes nothing

    data = prepare_data(plan)
    written = json.loads((out / "data_report.json").read_text())
    assert written == json.loads(json.dumps(data.report))
    assert written["tokens"] > 0 and written["padding_ratio"] is not None
    assert written["train"] == sum(1 for _ in (out / "train.jsonl").open())
    assert sorted(p.name for p in out.iterdir()) == [
        "data_report.json", "test.jsonl", "train.jsonl", "validation.jsonl",
    ]  # fmt: skip
    assert data.splits.total_steps == 4  # maxSteps


def test_a_pvc_outputs_checkpoints_are_named_in_pvc_terms(job_dir, monkeypatch):
    # Mounted at FINETUNE_PVC_ROOT, the claim is written through a local path; status says pvc://.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(job_dir / "mnt"))
    manifest = MakeJob.trainer().output("pvc://outputs/tiny").obj()
    plan = plan_run(write_job(job_dir, manifest), output=None, workers=1)
    assert plan.out.local_dir == job_dir / "mnt" / "outputs" / "tiny"
    assert plan.checkpoint_uri(2) == "pvc://outputs/tiny/checkpoints/tiny/checkpoint_step_00000002"


def test_progress_is_served_only_inside_the_block_and_only_when_asked(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/progress"
    monkeypatch.setenv(PORT_ENV, str(port))
    with serving(ProgressBoard()), urllib.request.urlopen(url, timeout=5) as reply:
        assert json.load(reply)["progress"] == {}
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
    monkeypatch.delenv(PORT_ENV)
    with serving(ProgressBoard()), pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)
