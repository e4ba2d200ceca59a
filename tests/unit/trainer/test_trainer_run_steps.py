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



def test_ray_starts_on_the_main_thread_while_the_records_are_tokenised(job_dir, monkeypatch):
    # Ray sets its signal handlers only from the main thread; tokenising (the tokenizer's and
    # torch's imports, then the records) overlaps it, with the same rows and report.
    import threading

    import finetune_trainer.rows

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    plan = plan_run(write_job(job_dir, MakeJob.trainer().obj()), output=None, workers=1)
    tokenizing, threads = threading.Event(), {}
    real_tokenize = finetune_trainer.rows.tokenize_splits

    def tokenize(*args):
        threads["tokenize"] = threading.current_thread()
        tokenizing.set()
        return real_tokenize(*args)

    def start_ray() -> None:
        threads["ray"] = threading.current_thread()
        assert tokenizing.wait(timeout=60), "the records were not tokenised beside Ray's start"

    monkeypatch.setattr(finetune_trainer.rows, "tokenize_splits", tokenize)
    data = prepare_data(plan, alongside=start_ray)
    assert threads["ray"] is threading.main_thread() is not threads["tokenize"]
    assert data.report == json.loads((job_dir / "out" / "data_report.json").read_text())
    assert data.report["tokens"] > 0 and data.splits.total_steps == 4


def test_a_refused_rerun_starts_no_ray(job_dir, monkeypatch):
    from finetune_operator.errors import UserError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    run = job_dir / "out" / "checkpoints" / "tiny"
    (run / "checkpoint_step_00000004").mkdir(parents=True)
    (run / "lineage.json").write_text(json.dumps({"spec": {}, "data": {}, "ranks": 2}))
    plan = plan_run(write_job(job_dir, MakeJob.trainer().obj()), output=None, workers=1)
    started: list[str] = []
    with pytest.raises(UserError, match="learningRate"):
        prepare_data(plan, alongside=lambda: started.append("ray"))
    assert started == []
