"""Eval integrity, in-process (no Ray): with early stopping, the test split is evaluated once,
at the end, on the weights of the step with the lowest validation loss, and those are the
weights the outputs get. Ray Train's checkpoint storage is a plain folder here (the same
DeepSpeed save and load); tests/integration/trainer/test_trainer_retention_runs.py runs the
same through Ray."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer import checkpoints, evaluate
from finetune_trainer.data import prepare_records
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob
from tests.forgetting import forgetting_workspace
from tests.in_process import worker_without_ray


@pytest.fixture(scope="module")
def forgetting(workspace, tmp_path_factory):
    folder = tmp_path_factory.mktemp("forgetting")
    return forgetting_workspace(folder, workspace / "model", workspace / "train.jsonl")


def test_test_split_is_evaluated_once_on_the_best_validation_step(
    forgetting, single_process_group, monkeypatch, tmp_path
):
    spec = (
        MakeJob.trainer().train("narrow.jsonl")
        .spec(
            method={"type": "full"},
            dataset={"validation": {"source": "retention.jsonl"},
                     "test": {"source": "test.jsonl"}},
            hyperparameters={"batchSize": 4, "microBatchSize": 2, "maxSteps": 4,
                             "learningRate": 3e-3},
            evaluation={"everySteps": 1, "earlyStopping": {"patience": 10}},
            checkpointing={"everySteps": 100, "keep": 1},
        )
        .typed_spec()
    )  # fmt: skip
    splits = tokenize_splits(prepare_records(spec, base_dir=forgetting), spec, forgetting / "model")
    worker = worker_without_ray(spec, splits.rows, base_dir=forgetting, total_steps=4,
                                steps_per_epoch=splits.steps_per_epoch,
                                output_dir=tmp_path / "out")  # fmt: skip

    def load_weights(engine, step):
        checkpoints.load_engine(engine, tmp_path / str(step), weights_only=True)

    monkeypatch.setattr(checkpoints, "load_weights", load_weights)
    saved, evals = [], {}
    while worker.steps_left():
        row = worker.train_step().read() | worker.evaluate_if_due()
        evals[row["step"]] = row["eval_loss"]
        if worker.checkpoint_due(stop=False):
            folder = tmp_path / str(row["step"]) / checkpoints.ENGINE_DIR
            worker.engine.save_checkpoint(str(folder), tag=checkpoints.ENGINE_TAG)
            saved.append(row["step"])
    worker.close()
    best = min(evals, key=evals.__getitem__)
    assert evals[4] > evals[best], f"validation must get worse at the end: {evals}"
    # A checkpoint at each new lowest validation loss, so the best is on disk (the end's is
    # save_final_checkpoint's, which this loop leaves out).
    new_bests = [s for s in evals if evals[s] < min([evals[t] for t in evals if t < s] or [9e9])]
    assert saved == new_bests
    assert worker.state.best_step == best

    def test_loss() -> float:
        result = evaluate.evaluate_losses(
            worker.engine, {"test": splits.rows["test"]}, micro=4, pad_token_id=worker.tokenizer.pad_token_id,
            device=torch.device("cpu"), dtype=torch.float32,
        )  # fmt: skip
        return result["test"]["loss"]

    last_step_test_loss = test_loss()
    passes = []
    real = evaluate.evaluate_losses
    monkeypatch.setattr(
        evaluate, "evaluate_losses", lambda *a, **k: passes.append(sorted(a[1])) or real(*a, **k)
    )
    worker.restore_best()
    metrics = worker.final_metrics()
    assert passes == [["test"]]  # test once; validation is the best step's, already known
    assert metrics["outputs_step"] == best and metrics["steps"] == 4
    assert metrics["outputs_chosen_by"] == "lowest validation loss"
    assert metrics["eval_loss"] == evals[best]
    assert metrics["last_step_eval_loss"] == evals[4]
    # The engine (what save_model writes) holds the best step's weights, and test was
    # measured on them, not on the last step's.
    monkeypatch.setattr(evaluate, "evaluate_losses", real)
    assert metrics["test_loss"] == pytest.approx(test_loss(), abs=1e-6)
    assert abs(metrics["test_loss"] - last_step_test_loss) > 1e-4
