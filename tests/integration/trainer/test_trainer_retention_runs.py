"""Whole `finetune run`s of the retention check and eval integrity, on a local Ray: a tiny
model that first learnt general chats (tests/forgetting.py) is over-trained on one narrow
answer, with and without replay of general chats mixed in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_trainer.run import run_command

from tests.factories import MakeJob, write_job
from tests.forgetting import forgetting_workspace

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THRESHOLD = 0.5  # nats per token


@pytest.fixture(scope="module")
def forgetting(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("forgetting")
    return forgetting_workspace(folder, workspace / "model", workspace / "train.jsonl")


def narrow_job(name: str, **sections) -> MakeJob:
    """Full fine-tuning on the narrow data at a high learning rate: it over-trains."""
    return (
        MakeJob.trainer(name).train("narrow.jsonl")
        .spec(
            method={"type": "full"},
            dataset={"testSplit": 0.0},
            hyperparameters={"maxSteps": 30, "learningRate": 3e-3, "batchSize": 8},
            evaluation={"everySteps": 30,
                        "retention": [{"source": "retention.jsonl", "name": "general"}],
                        "maxRetentionLossIncrease": THRESHOLD},
            resources={"workers": 1},
            checkpointing={"everySteps": 30, "keep": 1},
        )
        .spec(**sections)
        .output(f"out-{name}")
    )  # fmt: skip


def run(folder: Path, job: MakeJob, capsys) -> tuple[int, dict, str]:
    manifest = job.obj()
    path = write_job(folder, manifest, name=f"{manifest['metadata']['name']}.yaml")
    code = run_command(path, output=None, workers=1)
    out = folder / manifest["spec"]["output"]["destination"]
    return code, json.loads((out / "metrics.json").read_text()), capsys.readouterr().err


def test_narrow_over_training_trips_the_threshold_and_replay_trips_it_less(
    local_ray, forgetting, capsys
):
    code, narrow, printed = run(forgetting, narrow_job("narrow"), capsys)
    assert code == 0  # the model is written and the run succeeds: the user decides
    assert (forgetting / "out-narrow" / "model").is_dir()
    rise = narrow["retention_general_loss_increase"]
    assert narrow["retention_general_loss_before"] < 1.5  # the base knew the general chats
    assert rise > THRESHOLD and narrow["retention_regressed"] is True
    assert "warning: retention regressed: general loss" in printed
    card = (forgetting / "out-narrow" / "README.md").read_text()
    assert f"**exceeds {THRESHOLD}**" in card
    report = json.loads((forgetting / "out-narrow" / "data_report.json").read_text())
    assert report["retention"][0]["records"] == 40

    replay = narrow_job("replay", dataset={
        "mix": [{"source": "replay.jsonl", "format": "messages", "weight": 1.0}],
    })  # fmt: skip
    code, mixed, printed = run(forgetting, replay, capsys)
    assert code == 0
    # The same base, so the same loss before; replay keeps most of what it knew.
    assert mixed["retention_general_loss_before"] == pytest.approx(
        narrow["retention_general_loss_before"], abs=1e-5
    )
    assert mixed["retention_general_loss_increase"] < rise / 2
    assert mixed["retention_regressed"] is False
    assert "retention regressed" not in printed
    print(f"retention loss increase: narrow {rise:+.4f}, with replay "
          f"{mixed['retention_general_loss_increase']:+.4f}")  # fmt: skip


def test_early_stopping_publishes_the_best_validation_step(local_ray, forgetting, capsys):
    """Validation (general chats) gets worse as the narrow training goes on: the outputs
    hold the best step's weights, and test is measured on them."""
    job = narrow_job(
        "best",
        dataset={"validation": {"source": "retention.jsonl"}, "test": {"source": "test.jsonl"}},
        hyperparameters={"maxSteps": 8},
        evaluation={"everySteps": 2, "earlyStopping": {"patience": 10}, "retention": []},
        checkpointing={"everySteps": 100, "keep": 1},
    )
    code, metrics, _ = run(forgetting, job, capsys)
    assert code == 0
    out = forgetting / "out-best"
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r and r["step"] > 0}
    best = min(evals, key=evals.__getitem__)
    assert best < 8 and evals[8] > evals[best], f"validation must get worse at the end: {evals}"
    assert metrics["outputs_step"] == best and metrics["steps"] == 8
    assert metrics["eval_loss"] == evals[best] and metrics["last_step_eval_loss"] == evals[8]
    assert "test_loss" in metrics and not any("test_loss" in r for r in rows)
    assert f"The outputs hold the weights of step {best}" in (out / "README.md").read_text()
    # Ray Train kept the best checkpoint (keep: 1 by validation loss) beside the newest, and
    # model/ holds exactly its weights.
    folders = sorted(p.name for p in (out / "checkpoints" / "best").glob("checkpoint_step_*"))
    assert folders == [f"checkpoint_step_{best:08d}", "checkpoint_step_00000008"]
    from safetensors.torch import load_file

    states = torch.load(out / "checkpoints" / "best" / folders[0] / "engine" / "state"
                        / "mp_rank_00_model_states.pt", weights_only=False)["module"]  # fmt: skip
    published = load_file(out / "model" / "model.safetensors")
    for name, weight in published.items():
        assert torch.equal(weight, states[name].to(weight.dtype)), name
