"""A checkpoint every rank wrote but Ray Train never recorded (its driver was killed in the
seconds between) is where the next run resumes, not the recorded one before it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from finetune_trainer.run import EXIT_INTERRUPTED, STOP_AT_STEP_ENV, run_command

from tests.factories import MakeJob, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of the run's checkpoints


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def checkpoint_steps(run: Path) -> list[int]:
    return sorted(int(p.name.rsplit("_", 1)[1]) for p in run.glob("checkpoint_step_*"))


def test_a_run_resumes_from_a_complete_checkpoint_ray_never_recorded(
    local_ray, job_dir, tmp_path, monkeypatch
):
    manifest = MakeJob.trainer().spec(
        hyperparameters={"maxSteps": 4}, checkpointing={"everySteps": 1, "keep": 1},
        evaluation={"everySteps": 100},
    ).obj()  # fmt: skip
    job = write_job(job_dir, manifest)
    out = job_dir / "out"
    monkeypatch.setenv(STOP_AT_STEP_ENV, "2")
    assert run_command(job, output=None, workers=None) == EXIT_INTERRUPTED
    (run,) = (out / "checkpoints").iterdir()
    assert checkpoint_steps(run) == [2]
    # Storage as it is between step 3's upload and Ray recording it: Ray's record still
    # says step 2, and step 2's folder is not deleted yet (keep: 1 deletes it on recording 3).
    recorded_at_2 = (run / SNAPSHOT).read_bytes()
    shutil.copytree(run / "checkpoint_step_00000002", tmp_path / "step2")

    monkeypatch.setenv(STOP_AT_STEP_ENV, "3")
    assert run_command(job, output=None, workers=None) == EXIT_INTERRUPTED
    assert checkpoint_steps(run) == [3]
    (run / SNAPSHOT).write_bytes(recorded_at_2)  # the driver "died" in that window
    shutil.copytree(tmp_path / "step2", run / "checkpoint_step_00000002")

    monkeypatch.delenv(STOP_AT_STEP_ENV)
    assert run_command(job, output=None, workers=None) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 3
    assert [r["step"] for r in history(out) if "loss" in r] == [1, 2, 3, 4]
    # Ray deleted step 2, which it recorded, on recording 4; step 3, which it never
    # recorded, went once `keep` newer checkpoints were saved.
    assert checkpoint_steps(run) == [4]
