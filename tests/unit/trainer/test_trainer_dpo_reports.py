"""Where a DPO run's numbers show: /progress, the operator's gauges, the terminal, the card."""

from __future__ import annotations

import io

from finetune_operator.api import FineTuneJobStatus
from finetune_operator.metrics import OperatorMetrics
from finetune_trainer.model_card import model_card
from finetune_trainer.progress import ProgressView
from finetune_trainer.progress_server import ProgressBoard
from rich.console import Console

from tests.factories import MakeJob
from tests.unit.operator.test_operator_metrics import job_samples

DPO_JOB = MakeJob.trainer().train("p.jsonl", fmt="preference").spec(
    method={"objective": "dpo", "dpo": {"beta": 0.2, "lossType": "ipo"}})  # fmt: skip
STEP = {"step": 10, "epoch": 0.5, "loss": 0.41, "tokens_per_second": 900.0,
        "reward_accuracy": 0.875, "reward_margin": 0.62, "chosen_reward": 0.3,
        "rejected_reward": -0.32, "chosen_logp": -12.0, "rejected_logp": -15.5}  # fmt: skip
EVALUATION = {"eval_loss": 0.45, "eval_reward_accuracy": 0.8, "eval_reward_margin": 0.5}


def test_progress_and_the_operator_gauges_carry_reward_accuracy():
    board = ProgressBoard()
    board.update(STEP | EVALUATION, 40)
    progress = board.snapshot()["progress"]
    assert progress["rewardAccuracy"] == 0.875 and progress["rewardMargin"] == 0.62
    assert progress["evalRewardAccuracy"] == 0.8 and progress["trainLoss"] == 0.41
    metrics = OperatorMetrics()
    status = FineTuneJobStatus.model_validate({"phase": "Running", "attempts": 1,
                                               "progress": progress})  # fmt: skip
    metrics.record_job("team-a", "prefs", status)
    samples = job_samples(metrics, "team-a", "prefs")
    assert samples["finetune_job_reward_accuracy"] == 0.875
    assert samples["finetune_job_eval_reward_accuracy"] == 0.8


def test_the_terminal_shows_the_validation_reward_accuracy():
    out = io.StringIO()
    view = ProgressView(Console(file=out, force_terminal=False))
    view.update({"step": 0, "epoch": 0.0, "eval_loss": 0.6931, "eval_reward_accuracy": 0.0,
                 "eval_reward_margin": 0.0}, 40)  # fmt: skip
    view.update(STEP | EVALUATION, 40)
    text = out.getvalue()
    assert "step 0: validation loss 0.6931, reward accuracy 0.00, margin 0.000" in text
    assert "step 10: validation loss 0.4500, reward accuracy 0.80, margin 0.500" in text


def test_the_model_card_reports_dpo_settings_and_rewards_by_split():
    metrics = {"train_loss": 0.41, "eval_loss": 0.45}
    for prefix, accuracy in (("train", 0.9), ("eval", 0.8), ("test", 0.75)):
        metrics |= {f"{prefix}_reward_accuracy": accuracy, f"{prefix}_reward_margin": 0.5,
                    f"{prefix}_chosen_reward": 0.2, f"{prefix}_rejected_reward": -0.3,
                    f"{prefix}_chosen_logp": -10.0, f"{prefix}_rejected_logp": -14.0}  # fmt: skip
    card = model_card(DPO_JOB.typed(), metrics, {})
    assert "| objective | DPO, ipo loss, beta 0.2 |" in card
    assert "## Preferences" in card
    assert "| | train (last 10 steps) | validation | test |" in card
    assert "| reward accuracy (chosen reward > rejected) | 0.9 | 0.8 | 0.75 |" in card
    assert "| chosen log-prob | -10.0 | -10.0 | -10.0 |" not in card  # _plain formats floats
    assert "| chosen log-prob | -10 | -10 | -10 |" in card
    sft = model_card(MakeJob.trainer().typed(), {"train_loss": 1.0}, {})
    assert "Preferences" not in sft and "objective" not in sft
