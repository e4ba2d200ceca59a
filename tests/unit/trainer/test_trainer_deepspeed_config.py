"""The DeepSpeed config builder and the batch arithmetic behind it."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.deepspeed_config import (
    adamw_options,
    build_deepspeed_config,
    plan_batch,
)
from finetune_trainer.errors import BatchSizeError

from tests.factories import MakeJob


@pytest.mark.parametrize(
    ("batch", "world", "micro", "expected"),
    [
        (32, 1, None, (8, 4)),  # automatic micro batch is capped at 8
        (32, 4, None, (8, 1)),
        (12, 2, None, (6, 1)),
        (14, 2, None, (7, 1)),
        (22, 2, None, (1, 11)),  # 11 is prime and above the cap: accumulate 11 singles
        (32, 2, 4, (4, 4)),
        (8, 8, 1, (1, 1)),
    ],
)
def test_batch_is_micro_times_accumulation_times_world(batch, world, micro, expected):
    plan = plan_batch(batch, world, micro)
    assert (plan.micro_batch_size, plan.accumulation_steps) == expected
    assert plan.global_batch_size == batch


@pytest.mark.parametrize(
    ("batch", "world", "micro", "field"),
    [
        (30, 4, None, "batchSize"),
        (32, 2, 3, "microBatchSize"),
        (16, 4, 8, "microBatchSize"),
    ],
)
def test_unachievable_batch_names_the_field(batch, world, micro, field):
    with pytest.raises(BatchSizeError, match=rf"spec\.hyperparameters\.{field}"):
        plan_batch(batch, world, micro)


def spec(**overrides):
    return MakeJob.trainer().spec(**overrides).typed_spec()


@pytest.mark.parametrize(
    ("deepspeed", "precision", "checks"),
    [
        ({"zeroStage": 0}, "fp32", {"zero_optimization": {"stage": 0}}),
        ({"zeroStage": 2}, "bf16", {"bf16": {"enabled": True}}),
        (
            {"zeroStage": 2, "offloadOptimizer": True},
            "fp16",
            {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}},
        ),
        (
            {"zeroStage": 3, "offloadOptimizer": True, "offloadParams": True},
            "bf16",
            {"zero_optimization": {
                "stage": 3,
                "offload_optimizer": {"device": "cpu", "pin_memory": True},
                "offload_param": {"device": "cpu", "pin_memory": True},
                "stage3_gather_16bit_weights_on_model_save": True,
            }},
        ),
    ],
)  # fmt: skip
def test_config_follows_the_spec(deepspeed, precision, checks):
    config = build_deepspeed_config(spec(deepspeed=deepspeed), world_size=2, precision=precision)
    for key, expected in checks.items():
        for inner, value in expected.items():
            assert config[key][inner] == value, (key, inner)
    assert config["bf16"]["enabled"] == (precision == "bf16")
    assert config["fp16"]["enabled"] == (precision == "fp16")


def test_config_carries_batch_split_and_clipping():
    config = build_deepspeed_config(
        spec(hyperparameters={"batchSize": 24, "microBatchSize": 3, "maxGradNorm": 0.5}),
        world_size=4,
        precision="fp32",
    )
    assert config["train_batch_size"] == 24
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 2
    assert config["gradient_clipping"] == 0.5


def test_offloaded_optimizer_is_built_by_deepspeed_and_others_are_ours():
    offloaded = build_deepspeed_config(
        spec(deepspeed={"zeroStage": 2, "offloadOptimizer": True},
             hyperparameters={"learningRate": 1e-4, "weightDecay": 0.1}),
        world_size=1, precision="bf16",
    )  # fmt: skip
    assert offloaded["optimizer"]["params"]["lr"] == 1e-4
    assert offloaded["optimizer"]["params"]["weight_decay"] == 0.1
    plain = build_deepspeed_config(spec(), world_size=1, precision="fp32")
    assert "optimizer" not in plain


@pytest.mark.parametrize(("cuda", "overlap"), [(True, True), (False, False)])
def test_zero2_overlaps_gradient_reduction_with_backward_on_gpus(cuda, overlap):
    config = build_deepspeed_config(spec(), world_size=2, precision="bf16", cuda=cuda)
    assert config["zero_optimization"]["overlap_comm"] is overlap
    assert config["zero_optimization"]["contiguous_gradients"] is True


def test_adamw_is_fused_on_cuda_and_torchs_loop_on_cpu():
    hp = spec(hyperparameters={"learningRate": 1e-4, "weightDecay": 0.1}).hyperparameters
    assert adamw_options(hp, cuda=True) == {"lr": 1e-4, "weight_decay": 0.1, "fused": True}
    assert adamw_options(hp, cuda=False) == {"lr": 1e-4, "weight_decay": 0.1}
    # The options are ones torch's AdamW takes.
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], **adamw_options(hp, cuda=False))
