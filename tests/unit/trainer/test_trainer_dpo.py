"""DPO on the tiny model, in-process (no Ray): DeepSpeed ZeRO-2 on one gloo rank, through
the same step, reference and evaluation code the workers run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from finetune_trainer import dpo
from finetune_trainer.data import prepare_records
from finetune_trainer.deepspeed_config import build_deepspeed_config
from finetune_trainer.engine import build_engine
from finetune_trainer.model import load_base_model, load_tokenizer
from finetune_trainer.prefetch import collate_step
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob
from tests.in_process import step_micro_batches

CPU = torch.device("cpu")
TOPICS = ["rivers", "mountains", "bread", "trains", "music", "gardens", "stars", "boats"]


def separable_preferences(count: int) -> list[dict]:
    """Conversational pairs where the chosen answer is always helpful and the rejected one
    always the same curt refusal: a preference a few steps can learn."""
    return [
        {
            "prompt": [{"role": "user", "content": f"Tell me about {TOPICS[i % 8]}, item {i}."}],
            "chosen": [{"role": "assistant", "content": f"Gladly: {TOPICS[i % 8]} {i} is fun."}],
            "rejected": [{"role": "assistant", "content": "No. Go away."}],
        }
        for i in range(count)
    ]


@pytest.fixture
def dpo_dir(workspace: Path, tmp_path: Path) -> Path:
    (tmp_path / "model").symlink_to(workspace / "model")
    lines = [json.dumps(record) for record in separable_preferences(72)]
    (tmp_path / "prefs.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def dpo_job(method: str = "lora", **dpo_settings) -> MakeJob:
    return (
        MakeJob.trainer()
        .train("prefs.jsonl", fmt="preference")
        .spec(
            method={"type": method, "objective": "dpo", "dpo": {"beta": 0.5, **dpo_settings}},
            hyperparameters={
                "batchSize": 8,
                "microBatchSize": 4,
                "learningRate": 1e-2,
                "maxSteps": 12,
            },
            evaluation={"metrics": ["loss"]},
        )
    )


def setup(folder: Path, job: MakeJob):
    spec = job.typed_spec()
    splits = tokenize_splits(prepare_records(spec, base_dir=folder), spec, folder / "model")
    config = build_deepspeed_config(spec, world_size=1, precision="fp32")
    engine, _ = build_engine(spec, spec.hyperparameters.max_steps, folder / "model", config, "fp32")
    objective = dpo.objective_for(spec, folder / "model", CPU, torch.float32)
    pad = load_tokenizer(folder / "model", spec.model).pad_token_id
    return spec, splits, engine, objective, pad


def train(spec, splits, engine, objective, pad, steps: int) -> list[dict[str, float]]:
    rows = []
    for step in range(steps):
        micro = step_micro_batches(spec, splits, step, global_batch=8, micro=4)
        host = objective.on_host(collate_step(micro, pad, torch.float32, pin=False))
        loss, stats, tokens, loss_tokens = objective.step(engine, host, CPU)
        assert tokens.item() > loss_tokens.item() > 0
        rows.append({"loss": loss.item()} | {k: v.item() for k, v in stats.items()})
    return rows


def evaluate(engine, objective, rows, pad) -> dict[str, float]:
    return objective.evaluate(engine, {"v": rows}, micro=4, pad_token_id=pad, device=CPU,
                              dtype=torch.float32)["v"]  # fmt: skip


def test_lora_dpo_learns_separable_preferences(dpo_dir, single_process_group):
    spec, splits, engine, objective, pad = setup(dpo_dir, dpo_job())
    assert isinstance(objective.reference, dpo.AdapterReference)
    # One row per pair; the batch counts pairs.
    assert (
        len(splits.rows["train"]) + len(splits.rows["validation"]) + len(splits.rows["test"]) == 72
    )
    before = evaluate(engine, objective, splits.rows["validation"], pad)
    rows = train(spec, splits, engine, objective, pad, 12)
    after = evaluate(engine, objective, splits.rows["validation"], pad)
    # At step 0 the adapter is zero, so the policy is the reference: every reward is 0.
    assert before["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert before["reward_accuracy"] == 0.0 and before["reward_margin"] == pytest.approx(0)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert after["reward_accuracy"] > 0.9, after
    assert rows[-1]["reward_accuracy"] > 0.9, rows[-1]
    assert after["reward_margin"] > 0 and after["loss"] < math.log(2)
    assert after["chosen_reward"] > after["rejected_reward"]
    for stats in (after, rows[-1]):  # rewards are beta x log-ratios
        assert stats["reward_margin"] == pytest.approx(
            stats["chosen_reward"] - stats["rejected_reward"], rel=1e-5, abs=1e-6
        )


def test_lora_reference_is_the_base_model_with_the_adapter_off(dpo_dir, single_process_group):
    spec, splits, engine, objective, pad = setup(dpo_dir, dpo_job())
    train(spec, splits, engine, objective, pad, 3)
    model = engine.module  # the peft model inside the DeepSpeed engine
    adapters = {name: m for name, m in model.named_modules() if name.split(".")[-2:-1]
                in (["lora_A"], ["lora_B"])}  # fmt: skip
    assert adapters and any(m.weight.abs().sum() > 0 for n, m in adapters.items() if "lora_B" in n)
    calls: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, m in adapters.items()]
    batch = dpo.collate_pairs(splits.rows["validation"][:4], pad, torch.float32)
    try:
        reference = objective.reference.log_probs(engine, batch)
        assert calls == []  # the reference pass never touches an adapter weight
        with torch.no_grad():
            policy = dpo.sequence_log_probs(engine, batch)
        assert len(calls) == len(adapters)  # the policy pass uses every one
    finally:
        for hook in hooks:
            hook.remove()
    # The reference equals the base model as saved, loaded fresh without any adapter.
    base = load_base_model(dpo_dir / "model", spec.model, dtype=torch.float32, quantize_4bit=False)
    with torch.no_grad():
        from_disk = dpo.sequence_log_probs(base.eval(), batch)
    torch.testing.assert_close(reference, from_disk, atol=1e-5, rtol=1e-5)
    assert (policy - reference).abs().max() > 1e-3  # training moved the policy away
    # One copy of the base weights: the reference holds no model of its own, and the
    # trained model's frozen (non-adapter) parameters are exactly the base model's.
    assert not any(isinstance(v, torch.nn.Module) for v in vars(objective.reference).values())
    frozen = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    assert frozen == sum(p.numel() for p in base.parameters())


def test_full_dpo_keeps_a_frozen_reference_copy(dpo_dir, single_process_group):
    spec, splits, engine, objective, pad = setup(dpo_dir, dpo_job("full"))
    reference_model = objective.reference.model
    assert not any(p.requires_grad for p in reference_model.parameters())
    trained = {p.data_ptr() for p in engine.module.parameters()}
    assert not trained & {p.data_ptr() for p in reference_model.parameters()}
    batch = dpo.collate_pairs(splits.rows["validation"][:4], pad, torch.float32)
    before = objective.reference.log_probs(engine, batch)
    rows = train(spec, splits, engine, objective, pad, 2)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference
    torch.testing.assert_close(objective.reference.log_probs(engine, batch), before)
    with torch.no_grad():
        assert (dpo.sequence_log_probs(engine, batch) - before).abs().max() > 1e-3
