"""A finished run's output, run again with a changed job: refused, or trained anew with --fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_trainer.run import EXIT_BAD_INPUT, run_command

from tests.factories import MakeJob, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def steps(out: Path, key: str) -> list[int]:
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if key in row]


def test_a_changed_rerun_refuses_and_fresh_trains_from_the_start(local_ray, job_dir, capsys):
    first = MakeJob.trainer().spec(hyperparameters={"maxSteps": 2})
    job = write_job(job_dir, first.obj())
    assert run_command(job, output=None, workers=None) == 0
    out = job_dir / "out"
    weights = out / "adapter" / "adapter_model.safetensors"
    old_weights, old_card = weights.read_bytes(), (out / "README.md").read_text()

    write_job(job_dir, first.spec(hyperparameters={"learningRate": 1e-3}).obj())
    capsys.readouterr()
    assert run_command(job, output=None, workers=None) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "spec.hyperparameters.learningRate" in err and "--fresh" in err
    assert weights.read_bytes() == old_weights and (out / "README.md").read_text() == old_card

    assert run_command(job, output=None, workers=None, fresh=True) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 0 and metrics["steps"] == 2
    assert steps(out, "loss") == [1, 2] and steps(out, "eval_loss") == [0, 2]
    assert weights.read_bytes() != old_weights
    assert list(out.glob("checkpoints.old-*/tiny/checkpoint_step_00000002"))
