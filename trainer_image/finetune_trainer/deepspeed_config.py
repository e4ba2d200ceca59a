"""The DeepSpeed config for a job: a pure function of the spec, the world size and precision.

The global `batchSize` is split as micro x accumulation x world_size; everything else
(ZeRO stage, offload, clipping, precision) is copied from the spec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator import api

from finetune_trainer.errors import BatchSizeError

# Without a memory probe we cap the automatic micro batch; accumulation covers the rest.
AUTO_MICRO_BATCH_CAP = 8


@dataclass(frozen=True)
class BatchPlan:
    micro_batch_size: int  # sequences per rank per forward pass
    accumulation_steps: int  # micro batches per optimizer step
    world_size: int

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.accumulation_steps * self.world_size


def plan_batch(
    batch_size: int,
    world_size: int,
    micro_batch_size: int | None = None,
    *,
    auto_cap: int = AUTO_MICRO_BATCH_CAP,
) -> BatchPlan:
    """Split the global batch so that batch_size == micro x accumulation x world_size."""
    if batch_size % world_size:
        raise BatchSizeError(
            f"spec.hyperparameters.batchSize: {batch_size} sequences cannot be split evenly over "
            f"{world_size} training ranks; use a multiple of {world_size}"
        )
    per_rank = batch_size // world_size
    if micro_batch_size is None:
        micro_batch_size = max(
            d for d in range(1, min(per_rank, auto_cap) + 1) if per_rank % d == 0
        )
    elif per_rank % micro_batch_size:
        raise BatchSizeError(
            f"spec.hyperparameters.microBatchSize: {micro_batch_size} does not divide the "
            f"{per_rank} sequences each of the {world_size} ranks gets per step (batchSize "
            f"{batch_size} / {world_size}); choose a divisor of {per_rank} or null"
        )
    return BatchPlan(micro_batch_size, per_rank // micro_batch_size, world_size)


def build_deepspeed_config(
    spec: api.FineTuneJobSpec, *, world_size: int, precision: str, cuda: bool = False
) -> dict[str, Any]:
    """DeepSpeed's JSON config for `spec` on `world_size` ranks in `precision` (fp32/bf16/fp16)."""
    hp, ds = spec.hyperparameters, spec.deepspeed
    batch = plan_batch(hp.batch_size, world_size, hp.micro_batch_size)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        # On GPUs the gradient reduction runs on its own CUDA stream while backward goes on;
        # the CPU accelerator has no streams to overlap on.
        zero |= {"overlap_comm": cuda, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if ds.zero_stage == 3:
        # Saving a loadable model/ needs the full weights gathered on rank 0.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config: dict[str, Any] = {
        "train_batch_size": batch.global_batch_size,
        "train_micro_batch_size_per_gpu": batch.micro_batch_size,
        "gradient_accumulation_steps": batch.accumulation_steps,
        "gradient_clipping": hp.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # We pass our own torch AdamW (see adamw_options; DeepSpeed's needs compiled kernels).
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer:
        # Optimizer state in CPU memory needs DeepSpeed's own CPU Adam, so DeepSpeed builds it.
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": hp.learning_rate,
                "weight_decay": hp.weight_decay,
                "betas": [0.9, 0.999],
                "eps": 1e-8,
            },
        }
    return config


def adamw_options(hp: api.Hyperparameters, *, cuda: bool) -> dict[str, Any]:
    """Keyword arguments of our torch AdamW: fused into one kernel per step on CUDA (what
    peers default to), torch's loop on CPU, where no fused kernel exists."""
    return {"lr": hp.learning_rate, "weight_decay": hp.weight_decay} | (
        {"fused": True} if cuda else {}
    )
