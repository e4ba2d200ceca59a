"""What `finetune run` decides before any work: worker layout, run name, refusals."""

from __future__ import annotations

import re

import pytest
from finetune_operator import api
from finetune_trainer.layout import (
    MethodUnavailable,
    WorkerLayout,
    check_method_supported,
    plan_workers,
)
from finetune_trainer.ray_train import checkpoint_uri, run_name
from finetune_trainer.run import EXIT_BAD_INPUT, resolve_output, run_command

from tests.factories import MakeJob, write_job


@pytest.mark.parametrize(
    ("resources", "override", "gpus", "cpus", "local", "expected", "notes"),
    [
        # 2 pods x 4 GPUs = 8 ranks, each with a quarter of its pod's CPUs.
        ({"workers": 2, "gpusPerWorker": 4, "cpusPerWorker": 32}, None, 8, 64, False,
         (8, True, 8), 0),
        ({"workers": 3, "gpusPerWorker": 0, "cpusPerWorker": 4}, None, 0, 16, False,
         (3, False, 4), 0),
        # A GPU example smoke-run on a CPU-only machine: GPUs dropped with a note.
        ({"workers": 2, "gpusPerWorker": 1, "cpusPerWorker": 8}, None, 0, 2, True,
         (2, False, 1), 2),
        # --workers overrides resources.workers locally.
        ({"workers": 4, "gpusPerWorker": 0, "cpusPerWorker": 1}, 2, 0, 2, True, (2, False, 1), 0),
    ],
)  # fmt: skip
def test_worker_layout(resources, override, gpus, cpus, local, expected, notes):
    layout = plan_workers(
        api.ResourcesSpec.model_validate(resources), workers_override=override,
        cluster_gpus=gpus, cluster_cpus=cpus, local=local,
    )  # fmt: skip
    assert (layout.num_workers, layout.use_gpu, layout.cpus_per_worker) == expected
    assert len(layout.notes) == notes


def test_run_name_carries_the_uid_so_a_recreated_job_starts_fresh():
    first = api.ObjectMeta(name="chat", uid="5f0c1e2a-1111-2222-3333-444455556666")
    second = api.ObjectMeta(name="chat", uid="9a8b7c6d-1111-2222-3333-444455556666")
    assert run_name(first) == "chat-5f0c1e2a"
    assert run_name(first) != run_name(second)
    assert run_name(api.ObjectMeta(name="chat")) == "chat"


def test_a_checkpoint_lives_under_storage_then_run_name():
    """Ray Train's layout: storage_path / RunConfig name / the reported checkpoint_dir_name."""
    assert (
        checkpoint_uri("s3://bucket/run/checkpoints/", "chat-5f0c1e2a", 12)
        == "s3://bucket/run/checkpoints/chat-5f0c1e2a/checkpoint_step_00000012"
    )
    assert (
        checkpoint_uri("/out/checkpoints", "chat", 3)
        == "/out/checkpoints/chat/checkpoint_step_00000003"
    )


def test_in_cluster_means_ray_address_is_set(monkeypatch):
    from finetune_trainer.cluster import in_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not in_cluster()
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert in_cluster()


def test_qlora_without_gpu_is_refused():
    with pytest.raises(MethodUnavailable, match=r"spec\.method\.type: qlora .*CUDA"):
        check_method_supported(api.MethodSpec(type="qlora"), WorkerLayout(2, False, 1))


def test_qlora_on_gpu_needs_bitsandbytes(monkeypatch):
    import importlib.util

    installed = {"bitsandbytes": False}
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: (
            (object() if installed[name] else None)
            if name == "bitsandbytes"
            else real_find_spec(name, *a)
        ),
    )
    gpu_layout = WorkerLayout(2, True, 1)
    with pytest.raises(MethodUnavailable, match=r"finetune-operator\[gpu\]"):
        check_method_supported(api.MethodSpec(type="qlora"), gpu_layout)
    installed["bitsandbytes"] = True
    check_method_supported(api.MethodSpec(type="qlora"), gpu_layout)
    check_method_supported(api.MethodSpec(type="lora"), WorkerLayout(2, False, 1))


def test_qlora_on_cpu_fails_before_data_or_model_are_touched(tmp_path, capsys):
    """The data source and model do not even exist: the qlora error must come first."""
    manifest = (
        MakeJob.trainer()
        .spec(
            method={"type": "qlora"},
            model={"source": "no-such-model"},
            dataset={"train": {"source": "no-such-data.jsonl"}},
            resources={"workers": 1, "gpusPerWorker": 1, "cpusPerWorker": 1},
        )
        .obj()
    )
    code = run_command(write_job(tmp_path, manifest), output=None, workers=None)
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "qlora" in err and "no-such" not in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "workers", "message"),
    [
        ({"hyperparameters": {"batchSize": 5}}, None, r"batchSize: 5 .* 2 training ranks"),
        ({"hyperparameters": {"batchSize": 8, "microBatchSize": 3}}, None, "microBatchSize: 3"),
        ({"model": {"source": "missing-model"}}, None, r"spec\.model\.source: missing-model"),
        ({"hyperparameters": {"batchSize": 512}}, 1, r"batchSize: 512 .* only \d+ rows"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(job_dir, capsys, overrides, workers, message):
    code = run_command(
        write_job(job_dir, MakeJob.trainer().spec(**overrides).obj()), output=None, workers=workers
    )
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_invalid_manifest_names_each_field_on_its_own_line(tmp_path, capsys):
    manifest = MakeJob.trainer().spec(hyperparameters={"learningRate": -1, "batchSize": 0}).obj()
    job_file = write_job(tmp_path, manifest)
    assert run_command(job_file, output=None, workers=None) == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(": ")[2] for line in lines] == [
        "spec.hyperparameters.learningRate",
        "spec.hyperparameters.batchSize",
    ]
    assert all(line.count(str(job_file)) == 1 for line in lines), lines


def test_output_destinations(tmp_path, monkeypatch):
    local = resolve_output("out/run1", None, tmp_path)
    assert local.local_dir == tmp_path / "out" / "run1"
    assert local.checkpoint_storage == str(tmp_path / "out" / "run1" / "checkpoints")
    override = resolve_output("s3://bucket/prefix", tmp_path / "elsewhere", tmp_path)
    assert override.local_dir == tmp_path / "elsewhere" and not override.remote
    monkeypatch.setenv("FINETUNE_STAGING_DIR", str(tmp_path / "staging"))
    remote = resolve_output("s3://bucket/runs/a/", None, tmp_path)
    assert remote.remote and remote.checkpoint_storage == "s3://bucket/runs/a/checkpoints"
    assert remote.local_dir.parent == tmp_path / "staging"
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path / "pvc"))
    pvc = resolve_output("pvc://shared/runs/b", None, tmp_path)
    assert pvc.local_dir == tmp_path / "pvc" / "shared" / "runs" / "b"


def test_checkpoints_on_s3_compatible_storage_use_its_endpoint(monkeypatch):
    from finetune_trainer.ray_train import checkpoint_storage

    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("S3_ENDPOINT_URL", raising=False)
    assert checkpoint_storage("s3://bucket/run/checkpoints") == {
        "storage_path": "s3://bucket/run/checkpoints"
    }
    assert checkpoint_storage("/data/run/checkpoints") == {"storage_path": "/data/run/checkpoints"}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.storage:9000")
    on_prem = checkpoint_storage("s3://bucket/run/checkpoints")
    assert on_prem["storage_path"] == "bucket/run/checkpoints"
    assert type(on_prem["storage_filesystem"]).__name__ == "S3FileSystem"


def test_tracker_forgets_rows_past_the_checkpoint_a_restarted_attempt_resumes_from():
    from finetune_trainer.tracker import ProgressTracker

    tracker = ProgressTracker()
    tracker.started(0)
    for step in (1, 2, 3):
        tracker.record({"step": step})
    assert [r["step"] for r in tracker.poll().rows] == [1, 2, 3]
    tracker.record({"step": 4})  # never handed out: the worker group died after it
    tracker.started(2)  # Ray Train restarted the group from the checkpoint at step 2
    tracker.record({"step": 3})
    state = tracker.poll()
    assert [r["step"] for r in state.rows] == [3]
    assert (state.start_step, state.resumed_at, state.attempts) == (0, 2, 2)


def test_tracker_test_hook_and_ctrl_c_both_ask_rank_0_to_stop():
    from finetune_trainer.tracker import ProgressTracker

    hooked = ProgressTracker(stop_at_step=2)
    assert [hooked.record({"step": s}) for s in (1, 2)] == [False, True]
    interrupted = ProgressTracker()
    assert interrupted.record({"step": 1}) is False
    interrupted.request_stop()
    assert interrupted.record({"step": 2}) is True
