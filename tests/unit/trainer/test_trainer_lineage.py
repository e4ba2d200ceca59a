"""Checkpoints resume only the job that made them: same spec fields, same data, same ranks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from finetune_operator import api
from finetune_trainer import lineage
from finetune_trainer.lineage import CheckpointsFromAnotherJob, Lineage, lineage_of
from finetune_trainer.run import EXIT_BAD_INPUT, run_command

from tests.factories import MakeJob, write_job

RECORDS = {"train": [{"text": "a"}, {"text": "b"}], "validation": [{"text": "c"}]}


def spec_of(**sections) -> api.FineTuneJobSpec:
    return api.FineTuneJobSpec.model_validate(MakeJob.trainer().spec(**sections).obj()["spec"])


BASE = lineage_of(spec_of(), RECORDS, ranks=2)

# (spec sections, records, ranks, what the refusal names; None: the checkpoints resume)
CHANGES = {
    "learning rate": ({"hyperparameters": {"learningRate": 1e-4}}, RECORDS, 2,
                      "spec.hyperparameters.learningRate"),
    "seed": ({"hyperparameters": {"seed": 7}}, RECORDS, 2, "spec.hyperparameters.seed"),
    "max steps": ({"hyperparameters": {"maxSteps": 9}}, RECORDS, 2, "spec.hyperparameters.maxSteps"),
    "method": ({"method": {"type": "full"}}, RECORDS, 2, "spec.method.type"),
    "lora rank": ({"method": {"lora": {"r": 4}}}, RECORDS, 2, "spec.method.lora.r"),
    "model revision": ({"model": {"revision": "v2"}}, RECORDS, 2, "spec.model.revision"),
    "model source": ({"model": {"source": "other"}}, RECORDS, 2, "spec.model.source"),
    "sequence length": ({"dataset": {"maxSeqLength": 64}}, RECORDS, 2,
                        "spec.dataset.maxSeqLength"),
    "zero stage": ({"deepspeed": {"zeroStage": 3}}, RECORDS, 2, "spec.deepspeed.zeroStage"),
    "early stopping": ({"evaluation": {"earlyStopping": {"patience": 1}}}, RECORDS, 2,
                       "spec.evaluation.earlyStopping"),
    "train data": ({}, RECORDS | {"train": [{"text": "a"}]}, 2, "the prepared train data"),
    "validation data": ({}, RECORDS | {"validation": []}, 2, "the prepared validation data"),
    "ranks under ZeRO": ({}, RECORDS, 1, r"training ranks \(2 -> 1"),
    "output": ({"output": {"destination": "elsewhere"}}, RECORDS, 2, None),
    "workers' resources": ({"resources": {"cpusPerWorker": 4, "memoryPerWorker": "8Gi"}},
                           RECORDS, 2, None),
    "checkpoint cadence": ({"checkpointing": {"everySteps": 1, "keep": 5}}, RECORDS, 2, None),
    "run policy": ({"runPolicy": {"backoffLimit": 0}}, RECORDS, 2, None),
    "micro batch": ({"hyperparameters": {"microBatchSize": 1}}, RECORDS, 2, None),
    "test metrics": ({"evaluation": {"metrics": ["loss"]}}, RECORDS, 2, None),
    "where the data lives": ({"dataset": {"train": {"source": "moved/train.jsonl"}}}, RECORDS, 2,
                             None),
}  # fmt: skip


@pytest.fixture
def storage(tmp_path: Path) -> str:
    """A run folder `tiny` in checkpoints/ holding a checkpoint and BASE's lineage."""
    run = tmp_path / "out" / "checkpoints" / "tiny"
    (run / "checkpoint_step_00000004").mkdir(parents=True)
    (run / lineage.LINEAGE_FILE).write_text(BASE.to_json())
    return str(tmp_path / "out" / "checkpoints")


@pytest.mark.parametrize(("sections", "records", "ranks", "named"), CHANGES.values(),
                         ids=CHANGES.keys())  # fmt: skip
def test_only_a_change_that_alters_the_weights_refuses_to_resume(
    storage, sections, records, ranks, named
):
    new = lineage_of(spec_of(**sections), records, ranks=ranks)
    if named is None:
        lineage.check(storage, "tiny", new, fresh=False, zero_stage=2)
        return
    with pytest.raises(CheckpointsFromAnotherJob, match=named) as refused:
        lineage.check(storage, "tiny", new, fresh=False, zero_stage=2)
    assert "--fresh" in str(refused.value) and f"{storage}/tiny" in str(refused.value)
    lineage.check(storage, "tiny", new, fresh=True, zero_stage=2)  # --fresh never refuses


def test_ranks_may_change_when_zero_does_not_partition(storage):
    lineage.check(storage, "tiny", lineage_of(spec_of(), RECORDS, ranks=1), fresh=False,
                  zero_stage=0)  # fmt: skip


def test_checkpoints_without_a_lineage_are_not_resumed(storage):
    (Path(storage) / "tiny" / lineage.LINEAGE_FILE).unlink()
    with pytest.raises(CheckpointsFromAnotherJob, match=r"no lineage\.json .*--fresh"):
        lineage.check(storage, "tiny", BASE, fresh=False, zero_stage=2)


def test_a_run_folder_without_checkpoints_takes_any_lineage(storage):
    (Path(storage) / "tiny" / "checkpoint_step_00000004").rmdir()
    new = lineage_of(spec_of(hyperparameters={"seed": 1}), RECORDS, ranks=2)
    lineage.check(storage, "tiny", new, fresh=False, zero_stage=2)
    assert lineage.claim(storage, "tiny", new, fresh=False) is None
    assert Lineage.from_json((Path(storage) / "tiny" / "lineage.json").read_text()) == new


def test_fresh_moves_the_old_checkpoints_aside_and_records_the_new_lineage(storage):
    new = lineage_of(spec_of(hyperparameters={"seed": 1}), RECORDS, ranks=2)
    moved = lineage.claim(storage, "tiny", new, fresh=True)
    assert moved is not None and moved.startswith(f"{storage}.old-") and moved.endswith("/tiny")
    assert (Path(moved) / "checkpoint_step_00000004").is_dir()
    assert Lineage.from_json((Path(moved) / "lineage.json").read_text()) == BASE
    assert sorted(p.name for p in (Path(storage) / "tiny").iterdir()) == ["lineage.json"]
    lineage.check(storage, "tiny", new, fresh=False, zero_stage=2)


def test_a_changed_rerun_refuses_before_writing_anything(job_dir, capsys, monkeypatch):
    """The old run's files stay as they were, and nothing of Ray's is printed (the local
    instance starting beside the data stage is stopped unseen)."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = job_dir / "out"
    run = out / "checkpoints" / "tiny"
    (run / "checkpoint_step_00000004").mkdir(parents=True)
    (run / "lineage.json").write_text(json.dumps({"spec": {}, "data": {}, "ranks": 2}))
    (out / "data_report.json").write_text("{}")
    job = write_job(job_dir, MakeJob.trainer().obj())
    assert run_command(job, output=None, workers=None) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "spec.hyperparameters.learningRate" in err and "the prepared train data" in err
    assert (out / "data_report.json").read_text() == "{}"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "data_report.json"]


@pytest.fixture(scope="module")
def s3_storage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server with one bucket; the AWS_* environment points at it."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("no-aws-home")
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "none"), "AWS_CONFIG_FILE": str(home / "none"),
        }.items():  # fmt: skip
            patch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        lineage.s3_filesystem().mkdir("runs")
        yield "s3://runs/job/checkpoints"
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


def test_lineage_on_s3_refuses_a_change_and_fresh_moves_the_checkpoints(s3_storage):
    fs = lineage.s3_filesystem()
    fs.pipe("runs/job/checkpoints/tiny/checkpoint_step_00000004/trainer_state.json", b"{}")
    lineage.claim(s3_storage, "tiny", BASE, fresh=False)
    lineage.check(s3_storage, "tiny", BASE, fresh=False, zero_stage=2)
    new = lineage_of(spec_of(hyperparameters={"seed": 1}), RECORDS, ranks=2)
    with pytest.raises(CheckpointsFromAnotherJob, match=r"spec\.hyperparameters\.seed"):
        lineage.check(s3_storage, "tiny", new, fresh=False, zero_stage=2)
    moved = lineage.claim(s3_storage, "tiny", new, fresh=True)
    assert moved is not None and moved.startswith("s3://runs/job/checkpoints.old-")
    assert fs.exists(f"{moved.removeprefix('s3://')}/checkpoint_step_00000004/trainer_state.json")
    assert not fs.glob("runs/job/checkpoints/tiny/checkpoint_step_*")
    lineage.check(s3_storage, "tiny", new, fresh=False, zero_stage=2)
