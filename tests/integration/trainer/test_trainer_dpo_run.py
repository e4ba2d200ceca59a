"""A whole DPO `finetune run`, interrupted and resumed: two Ray workers, ZeRO-2 on CPU."""

from __future__ import annotations

import json
import math

import pytest
from finetune_trainer.run import EXIT_INTERRUPTED, STOP_AT_STEP_ENV, run_command

from tests.factories import MakeJob, write_job
from tests.unit.trainer.test_trainer_dpo import separable_preferences

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def history(out) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_an_interrupted_dpo_run_resumes_and_reports_its_rewards(local_ray, job_dir, monkeypatch):
    lines = [json.dumps(record) for record in separable_preferences(80)]
    (job_dir / "prefs.jsonl").write_text("\n".join(lines) + "\n")
    manifest = (
        MakeJob.trainer()
        .train("prefs.jsonl", fmt="preference")
        .spec(
            method={"objective": "dpo", "dpo": {"beta": 0.5}},
            hyperparameters={"maxSteps": 6, "learningRate": 1e-2},
            checkpointing={"everySteps": 100, "keep": 2},
            evaluation={"everySteps": 3, "metrics": ["loss"]},
        )
        .obj()
    )
    job = write_job(job_dir, manifest)
    out = job_dir / "out"
    monkeypatch.setenv(STOP_AT_STEP_ENV, "2")  # as if Ctrl-C came during step 2
    assert run_command(job, output=None, workers=None) == EXIT_INTERRUPTED
    assert max(r["step"] for r in history(out)) == 2
    assert list((out / "checkpoints").glob("*/checkpoint_step_00000002"))

    monkeypatch.delenv(STOP_AT_STEP_ENV)
    assert run_command(job, output=None, workers=None) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 6
    rows = history(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]
    evaluations = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in evaluations] == [0, 3, 6]
    # The base model is the reference: before training every reward is 0, the loss log 2.
    assert evaluations[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert evaluations[0]["eval_reward_accuracy"] == 0.0
    assert evaluations[-1]["eval_reward_accuracy"] > 0.9  # separable pairs, two ranks
    assert evaluations[-1]["eval_loss"] < math.log(2)
    for row in rows:
        if "loss" in row:
            assert {"reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp"} <= set(row)
    for name in ("train_reward_accuracy", "eval_reward_accuracy", "test_reward_accuracy",
                 "eval_reward_margin", "test_chosen_logp"):  # fmt: skip
        assert name in metrics, name
    assert "## Preferences" in (out / "README.md").read_text()
    assert (out / "adapter" / "adapter_config.json").exists()
