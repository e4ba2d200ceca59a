"""Whole `finetune run`s: two Ray workers, DeepSpeed ZeRO-2 on CPU, the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_trainer.precision import bf16_native
from finetune_trainer.run import EXIT_INTERRUPTED, STOP_AT_STEP_ENV, run_command
from finetune_trainer.schedule import lr_multiplier

from tests.factories import MakeJob, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONTRACT = ["checkpoints", "metrics.json", "history.jsonl", "data_report.json", "loss.png",
            "README.md"]  # fmt: skip
ALL_METRICS = ["loss", "perplexity", "accuracy", "exact_match", "bleu", "rouge"]


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def probe_ids(out: Path) -> torch.Tensor:
    """A validation row as the model saw it."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out / "adapter")
    record = json.loads((out / "validation.jsonl").read_text().splitlines()[0])
    text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
    return tokenizer(text, return_tensors="pt")["input_ids"]


def trained_model_from_checkpoint(out: Path, base_dir: Path, lora_kwargs: dict):
    """The model exactly as training left it: its weights from the last DeepSpeed checkpoint."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    checkpoint = sorted((out / "checkpoints").glob("*/checkpoint_step_*"))[-1]
    states = torch.load(
        checkpoint / "engine" / "state" / "mp_rank_00_model_states.pt", weights_only=False
    )
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        LoraConfig(task_type="CAUSAL_LM", **lora_kwargs),
    )
    model.load_state_dict(states["module"])
    return model.eval()


def test_lora_run_writes_every_output_and_the_adapter_reloads(local_ray, job_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    manifest = (
        MakeJob.trainer()
        .spec(
            evaluation={"everySteps": 2, "metrics": ALL_METRICS, "maxGenerationSamples": 4},
            output={"destination": "out", "mergeAdapter": True},
        )
        .obj()
    )
    assert run_command(write_job(job_dir, manifest), output=None, workers=None) == 0
    out = job_dir / "out"
    for name in [*CONTRACT, "adapter", "model"]:
        assert (out / name).exists(), name

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ["train_loss", "eval_loss", "test_loss", "test_perplexity", "test_accuracy",
                "test_exact_match", "test_bleu", "test_rouge", "baseline_eval_loss"]:  # fmt: skip
        assert key in metrics, key
    assert metrics["eval_loss"] < metrics["baseline_eval_loss"]
    rows = history(out)
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    for row in rows[1:]:
        assert {"epoch", "learning_rate", "tokens_per_second", "loss_tokens_per_second"} <= set(row)
    assert [r["step"] for r in rows if "eval_loss" in r] == [0, 2, 4]
    report = json.loads((out / "data_report.json").read_text())
    assert report["tokens"] > 0 and report["padding_ratio"] is not None
    card = (out / "README.md").read_text()
    assert "model" in card and f"{metrics['eval_loss']:.4g}" in card

    ids = probe_ids(out)
    trained = trained_model_from_checkpoint(
        out, job_dir / "model", {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
    )
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(job_dir / "model"), out / "adapter"
    ).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(job_dir / "model").eval()
    with torch.no_grad():
        expected = trained(ids).logits
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-3, atol=1e-3)
        assert not torch.allclose(base(ids).logits, expected, atol=1e-3)


def test_full_run_writes_a_loadable_model(local_ray, job_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = (
        MakeJob.trainer()
        .spec(method={"type": "full"}, hyperparameters={"learningRate": 1e-3})
        .obj()
    )
    assert (
        run_command(write_job(job_dir, manifest), output=job_dir / "elsewhere", workers=None) == 0
    )
    out = job_dir / "elsewhere"  # --output overrides spec.output.destination
    assert not (job_dir / "out").exists()
    for name in [*CONTRACT, "model"]:
        assert (out / name).exists(), name
    assert not (out / "adapter").exists()
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    before = AutoModelForCausalLM.from_pretrained(job_dir / "model")
    changed = [n for n, p in model.named_parameters()
               if not torch.equal(p, before.get_parameter(n))]  # fmt: skip
    assert "lm_head.weight" in changed and len(changed) > 10
    assert tokenizer.chat_template
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"] == metrics["total_parameters"]


@pytest.mark.skipif(
    not bf16_native(cuda=False), reason="needs a CPU with AMX or AVX512-BF16 instructions"
)
def test_a_bf16_run_on_a_cpu_with_bf16_instructions_trains_and_resumes_in_bf16(
    local_ray, job_dir, monkeypatch
):
    manifest = MakeJob.trainer().spec(
        hyperparameters={"maxSteps": 4, "precision": "bf16"},
        checkpointing={"everySteps": 100, "keep": 1},
    ).obj()  # fmt: skip
    job = write_job(job_dir, manifest)
    out = job_dir / "out"
    monkeypatch.setenv(STOP_AT_STEP_ENV, "2")
    assert run_command(job, output=None, workers=None) == EXIT_INTERRUPTED
    monkeypatch.delenv(STOP_AT_STEP_ENV)
    assert run_command(job, output=None, workers=None) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "bf16"
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    losses = [r["loss"] for r in history(out) if "loss" in r]
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_an_interrupted_run_resumes_at_its_checkpoint(local_ray, job_dir, monkeypatch):
    manifest = MakeJob.trainer().spec(
        hyperparameters={"maxSteps": 6}, checkpointing={"everySteps": 100, "keep": 2},
        evaluation={"everySteps": 3},
    ).obj()  # fmt: skip
    job = write_job(job_dir, manifest)
    out = job_dir / "out"
    monkeypatch.setenv(STOP_AT_STEP_ENV, "2")  # as if Ctrl-C came during step 2
    assert run_command(job, output=None, workers=None) == EXIT_INTERRUPTED
    stopped_at = max(r["step"] for r in history(out))
    assert stopped_at == 2
    assert list((out / "checkpoints").glob("*/checkpoint_step_00000002"))
    assert not (out / "metrics.json").exists()
    # As if the driver had been killed after the checkpoint was saved but before it wrote
    # the step's row: the checkpoint carries the row, and the resumed run puts it back.
    kept = (out / "history.jsonl").read_text().splitlines()[:-1]
    (out / "history.jsonl").write_text("".join(line + "\n" for line in kept))
    assert max(r["step"] for r in history(out)) == 1

    monkeypatch.delenv(STOP_AT_STEP_ENV)
    assert run_command(job, output=None, workers=None) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == 2
    trained = [r["step"] for r in history(out) if "loss" in r]
    assert trained == [1, 2, 3, 4, 5, 6]  # continued at 3, nothing repeated or lost
    assert [r["step"] for r in history(out) if "eval_loss" in r] == [0, 3, 6]
    assert metrics["steps"] == 6
    assert metrics["precision"] == "fp32"  # `auto` on a CPU
    # The scheduler's state came back too: every step used the rate of an unbroken run.
    peak = manifest["spec"]["hyperparameters"]["learningRate"]
    for row in history(out):
        if "loss" in row:
            expected = peak * lr_multiplier(row["step"] - 1, total=6, warmup=0, kind="cosine")
            assert row["learning_rate"] == pytest.approx(expected), row
