"""Which precision a run trains in, and bf16 training on a CPU with bf16 instructions."""

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
from finetune_trainer.precision import bf16_native, resolve_precision
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob
from tests.in_process import train_steps

CPU_BF16 = bf16_native(cuda=False)


@pytest.mark.parametrize(
    ("requested", "cuda", "bf16", "expected", "noted"),
    [
        ("auto", False, False, "fp32", False),
        ("auto", False, True, "fp32", False),  # auto never changes a CPU run's numbers
        ("fp32", False, True, "fp32", False),
        ("bf16", False, True, "bf16", False),  # AMX / AVX512-BF16
        ("bf16", False, False, "fp32", True),
        ("fp16", False, True, "fp32", True),
        ("auto", True, True, "bf16", False),
        ("auto", True, False, "fp16", False),
        ("bf16", True, False, "fp16", True),
        ("fp32", True, True, "fp32", False),
    ],
)
def test_precision_resolution(requested, cuda, bf16, expected, noted):
    precision, note = resolve_precision(requested, cuda=cuda, bf16_supported=bf16)
    assert precision == expected
    assert (note is not None) == noted


def test_a_cpu_without_bf16_instructions_is_told_why_it_trains_in_fp32():
    _, note = resolve_precision("bf16", cuda=False, bf16_supported=False)
    assert note is not None and "AMX" in note and "fp32" in note


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo")
def test_the_cpu_probe_agrees_with_the_kernels_cpu_flags():
    flags = {
        flag
        for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
        for flag in line.split(":", 1)[1].split()
    }
    assert bool({"amx_tile", "avx512_bf16"} & flags) == CPU_BF16


@pytest.mark.skipif(not CPU_BF16, reason="needs a CPU with AMX or AVX512-BF16 instructions")
def test_bf16_on_such_a_cpu_trains_bf16_weights_and_lowers_the_loss(
    workspace, single_process_group
):
    spec = MakeJob.trainer().spec(
        hyperparameters={"batchSize": 4, "microBatchSize": 2, "learningRate": 3e-3,
                         "maxSteps": 3, "precision": "bf16"},
    ).typed_spec()  # fmt: skip
    precision, note = resolve_precision("bf16", cuda=False, bf16_supported=CPU_BF16)
    assert (precision, note) == ("bf16", None)
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    config = build_deepspeed_config(spec, world_size=1, precision=precision)
    engine, model = build_engine(spec, 3, workspace / "model", config, precision)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    pad = load_tokenizer(workspace / "model", spec.model).pad_token_id
    rows = splits.rows["train"][:8]
    cpu = torch.device("cpu")
    before = evaluate.evaluate_loss(engine, rows, micro=4, pad_token_id=pad, device=cpu,
                                    dtype=torch.bfloat16)  # fmt: skip
    losses = train_steps(spec, splits, engine, 3, pad, dtype=torch.bfloat16)
    after = evaluate.evaluate_loss(engine, rows, micro=4, pad_token_id=pad, device=cpu,
                                   dtype=torch.bfloat16)  # fmt: skip
    assert all(math.isfinite(x) for x in losses)
    assert after["loss"] < before["loss"]
