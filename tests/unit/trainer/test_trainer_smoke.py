"""Two or three real optimizer steps of the tiny model, in-process (no Ray): DeepSpeed
ZeRO-2 on one gloo rank, through the same step and evaluation code the workers run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from finetune_trainer import evaluate
from finetune_trainer.data import prepare_records
from finetune_trainer.deepspeed_config import build_deepspeed_config
from finetune_trainer.engine import build_engine
from finetune_trainer.model import load_tokenizer
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob
from tests.in_process import train_steps, worker_without_ray


def engine_for(workspace: Path, method: str, total_steps: int):
    spec = MakeJob.trainer().spec(
        method={"type": method},
        hyperparameters={"batchSize": 4, "microBatchSize": 2, "learningRate": 3e-3,
                         "maxSteps": total_steps, "gradientCheckpointing": True},
        evaluation={"metrics": ["loss", "accuracy", "exact_match", "bleu", "rouge"]},
    ).typed_spec()  # fmt: skip
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    config = build_deepspeed_config(spec, world_size=1, precision="fp32")
    engine, _ = build_engine(spec, total_steps, workspace / "model", config, "fp32")
    return spec, splits, engine


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_few_steps_lower_the_loss(workspace, single_process_group, method):
    spec, splits, engine = engine_for(workspace, method, total_steps=3)
    pad = load_tokenizer(workspace / "model", spec.model).pad_token_id
    before = evaluate.evaluate_loss(engine, splits.rows["train"][:8], micro=4, pad_token_id=pad,
                                    device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    losses = train_steps(spec, splits, engine, 3, pad)
    after = evaluate.evaluate_loss(engine, splits.rows["train"][:8], micro=4, pad_token_id=pad,
                                   device=torch.device("cpu"), dtype=torch.float32)  # fmt: skip
    assert all(math.isfinite(x) for x in losses)
    assert after["loss"] < before["loss"]
    assert losses[-1] < losses[0]
    assert engine.global_steps == 3  # 2 micro batches each: accumulation made 3 optimizer steps
    assert math.isclose(after["perplexity"], math.exp(after["loss"]), rel_tol=1e-6)
    assert 0.0 <= after["accuracy"] <= 1.0


def test_generation_metrics_on_greedy_answers(workspace, single_process_group):
    spec, splits, engine = engine_for(workspace, "lora", total_steps=1)
    tokenizer = load_tokenizer(workspace / "model", spec.model)
    samples = splits.rows["generation"]
    assert samples and all(s["prompt_ids"] and s["reference"] for s in samples)
    answers = evaluate.generate_answers(
        engine.module, samples, tokenizer, device=torch.device("cpu"), zero3=False
    )
    assert len(answers) == len(samples)
    perfect = evaluate.generation_metrics([s["reference"] for s in samples],
                                          [s["reference"] for s in samples])  # fmt: skip
    assert perfect["exact_match"] == 1.0 and perfect["rouge"] == pytest.approx(1.0)
    assert perfect["bleu"] == pytest.approx(100.0)
    scored = evaluate.generation_metrics(answers, [s["reference"] for s in samples])
    assert scored["exact_match"] < 1.0  # an untrained model does not answer correctly


def test_generation_metrics_score_partial_answers_between_the_extremes():
    references = ["3 plus 4 is 7.", "The cat is red."]
    scores = evaluate.generation_metrics(["3 plus 4 is 8.", "The cat is red."], references)
    assert scores["exact_match"] == 0.5
    assert 0.5 < scores["rouge"] < 1.0
    assert 0.0 < scores["bleu"] < 100.0


def spy(function, calls: list):
    def recorded(*args, **kwargs):
        calls.append(args)
        return function(*args, **kwargs)

    return recorded


def test_a_worker_built_without_ray_steps_evaluates_and_sums_up(
    workspace, single_process_group, monkeypatch
):
    """The worker's setup seam: build → train_step/evaluate_if_due → final_metrics, in-process."""
    spec = (
        MakeJob.trainer()
        .spec(
            hyperparameters={"batchSize": 4, "microBatchSize": 2, "maxSteps": 2},
            evaluation={"everySteps": 1, "metrics": ["loss", "accuracy"]},
            checkpointing={"everySteps": 2, "keep": 1},
        )
        .typed_spec()
    )
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    worker = worker_without_ray(spec, splits.rows, base_dir=workspace, total_steps=2,
                                steps_per_epoch=splits.steps_per_epoch,
                                output_dir=workspace / "out")  # fmt: skip
    assert (worker.batch.micro_batch_size, worker.batch.accumulation_steps) == (2, 2)
    rows = []
    while worker.steps_left():
        rows.append(worker.train_step().read() | worker.evaluate_if_due())
        assert worker.checkpoint_due(stop=False) == (worker.state.step == 2)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss"]) and "eval_loss" in r for r in rows)
    assert worker.engine.global_steps == 2
    assert not worker.engine.is_compiled  # torchCompile is off by default
    passes = []
    monkeypatch.setattr(evaluate, "evaluate_losses", spy(evaluate.evaluate_losses, passes))
    metrics = worker.final_metrics()
    # The last step's evaluation pass (validation and test together) is the final one.
    assert passes == []
    assert metrics["eval_loss"] == rows[-1]["eval_loss"]
    assert metrics["train_loss"] == pytest.approx(sum(r["loss"] for r in rows) / 2)
    assert metrics["steps"] == 2 and metrics["stopped_early"] is False
    assert 0 < metrics["trainable_parameters"] < metrics["total_parameters"]
    assert {"eval_loss", "eval_perplexity", "test_loss", "test_accuracy"} <= set(metrics)


def test_prefetched_steps_see_the_same_batches_and_give_the_same_losses(
    workspace, single_process_group
):
    """The worker collates each step ahead on a thread; a plain in-order loop over the same
    steps (collate, then step) gives exactly the same losses."""
    spec = MakeJob.trainer().spec(
        hyperparameters={"batchSize": 4, "microBatchSize": 2, "maxSteps": 3, "learningRate": 3e-3},
    ).typed_spec()  # fmt: skip
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    torch.manual_seed(7)
    worker = worker_without_ray(spec, splits.rows, base_dir=workspace, total_steps=3,
                                steps_per_epoch=splits.steps_per_epoch,
                                output_dir=workspace / "out")  # fmt: skip
    prefetched = [worker.train_step().read()["loss"] for _ in range(3)]
    worker.close()
    torch.manual_seed(7)
    config = build_deepspeed_config(spec, world_size=1, precision="fp32")
    engine, _ = build_engine(spec, 3, workspace / "model", config, "fp32")
    pad = load_tokenizer(workspace / "model", spec.model).pad_token_id
    assert prefetched == train_steps(spec, splits, engine, 3, pad)


def test_torch_compile_compiles_the_engines_module(workspace, single_process_group):
    spec = MakeJob.trainer().spec(hyperparameters={"batchSize": 4, "torchCompile": True})
    typed = spec.typed_spec()
    config = build_deepspeed_config(typed, world_size=1, precision="fp32")
    engine, _ = build_engine(typed, 1, workspace / "model", config, "fp32")
    assert engine.is_compiled  # compiled lazily, at the first forward pass
