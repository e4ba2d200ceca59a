"""gradientCheckpointing: auto turns recomputation on only when the estimate needs it."""

from __future__ import annotations

import pydantic
import pytest
from finetune_operator import api, validation
from finetune_trainer.memory_estimate import (
    ModelShape,
    estimate_memory,
    resolve_checkpointing,
)
from transformers import GPT2Config, LlamaConfig

from tests.factories import MakeJob

GIB = 2**30
LLAMA_8B = ModelShape(layers=32, hidden=4096, intermediate=14336, vocab=128_256,
                      parameters=8_030_000_000)  # fmt: skip
LLAMA_1B = ModelShape(layers=16, hidden=2048, intermediate=8192, vocab=128_256,
                      parameters=1_240_000_000)  # fmt: skip
TINY = ModelShape(layers=2, hidden=64, intermediate=256, vocab=384, parameters=200_000)


@pytest.mark.parametrize(
    ("shape", "method", "micro", "seq", "device_gib", "zero", "world", "on"),
    [
        # LoRA on an 8B model, 8 packed rows of 4096 per H100: activations alone are far
        # beyond 80 GiB, so it must recompute.
        (LLAMA_8B, "lora", 8, 4096, 80, 2, 1, True),
        # One 2048-token row of a 1B model fits easily: recomputation would be wasted work.
        (LLAMA_1B, "lora", 1, 2048, 80, 2, 1, False),
        # A full fine-tune of 8B: 16 bytes per parameter of states do not fit one 80 GiB GPU.
        (LLAMA_8B, "full", 1, 1024, 80, 2, 1, True),
        # ... but ZeRO-3 over 8 GPUs splits them; a short sequence then fits.
        (LLAMA_8B, "full", 1, 512, 80, 3, 8, False),
        # The test suite's tiny model on a laptop's memory.
        (TINY, "lora", 8, 256, 8, 2, 1, False),
    ],
)  # fmt: skip
def test_auto_follows_the_estimate(shape, method, micro, seq, device_gib, zero, world, on):
    estimate = estimate_memory(shape, method=method, precision="bf16", tokens=micro * seq,
                               zero_stage=zero, world=world)  # fmt: skip
    decided, note = resolve_checkpointing("auto", estimate, device_gib * GIB)
    assert decided is on
    assert note is not None and ("on" if on else "off") in note and f"{device_gib:.1f} GiB" in note


def test_checkpointing_saves_most_activations():
    estimate = estimate_memory(LLAMA_8B, method="lora", precision="bf16", tokens=8 * 4096,
                               zero_stage=2, world=1)  # fmt: skip
    assert estimate.checkpointed_activations < estimate.activations / 4
    # Per token and layer in bf16: (10 x 4096 + 4 x 14336) values of 2 bytes.
    per_layer_token = 2 * (10 * 4096 + 4 * 14336)
    logits = 8 * 4096 * 128_256 * 10
    assert estimate.activations == 32 * 8 * 4096 * per_layer_token + logits


def test_full_fine_tune_states_split_with_the_zero_stage():
    def states(zero: int, world: int) -> float:
        return estimate_memory(LLAMA_1B, method="full", precision="bf16", tokens=1,
                               zero_stage=zero, world=world).states  # fmt: skip

    n = LLAMA_1B.parameters
    assert states(0, 4) == n * (2 + 2 + 12)
    assert states(1, 4) == n * (2 + 2 + 12 / 4)
    assert states(2, 4) == n * (2 + 2 / 4 + 12 / 4)
    assert states(3, 4) == n * 16 / 4


@pytest.mark.parametrize("requested", [True, False])
def test_an_explicit_choice_is_kept_whatever_the_estimate(requested):
    huge = estimate_memory(LLAMA_8B, method="full", precision="bf16", tokens=65_536,
                           zero_stage=0, world=1)  # fmt: skip
    assert resolve_checkpointing(requested, huge, 1 * GIB) == (requested, None)


def test_an_unknown_model_shape_checkpoints_to_be_safe():
    decided, note = resolve_checkpointing("auto", None, 80 * GIB)
    assert decided is True and "unknown" in (note or "")


def test_shapes_come_from_llama_and_gpt2_configs():
    llama = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=3,
                        vocab_size=500)  # fmt: skip
    assert ModelShape.of(llama, 1000) == ModelShape(3, 64, 172, 500, 1000)
    gpt2 = GPT2Config(n_embd=32, n_layer=2, vocab_size=100)
    assert ModelShape.of(gpt2, 10) == ModelShape(2, 32, 128, 100, 10)
    assert ModelShape.of(object(), 10) is None


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_the_field_takes_true_false_or_auto_at_admission_and_in_the_operator(value):
    job = MakeJob().set("spec.hyperparameters.gradientCheckpointing", value).obj()
    parsed = api.FineTuneJob.model_validate(job)
    assert parsed.spec.hyperparameters.gradient_checkpointing == value
    assert validation.cel_problems(validation._as_admitted(parsed)) == []


@pytest.mark.parametrize("value", ["sometimes", 3])
def test_anything_else_is_refused_at_admission_and_in_the_operator(value):
    job = MakeJob().set("spec.hyperparameters.gradientCheckpointing", value).obj()
    with pytest.raises(pydantic.ValidationError, match="gradientCheckpointing"):
        api.FineTuneJob.model_validate(job)
    admitted = validation._as_admitted(api.FineTuneJob.model_validate(MakeJob().obj()))
    admitted["spec"]["hyperparameters"]["gradientCheckpointing"] = value
    problems = validation.cel_problems(admitted)
    assert [p.path for p in problems] == ["spec.hyperparameters.gradientCheckpointing"]


def test_auto_is_the_default():
    assert MakeJob().typed_spec().hyperparameters.gradient_checkpointing == "auto"
