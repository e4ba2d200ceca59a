"""The DeepSpeed engine of one rank: model, method, checkpointing decision, AdamW, schedule."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from finetune_operator import api

from finetune_trainer.deepspeed_config import adamw_options, plan_batch
from finetune_trainer.memory_estimate import ModelShape, estimate_memory, resolve_checkpointing
from finetune_trainer.model import (
    apply_method,
    count_parameters,
    load_base_model,
    use_fast_kernels,
    use_loss_head,
)
from finetune_trainer.schedule import lr_multiplier, warmup_steps

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_engine(
    spec: api.FineTuneJobSpec,
    total_steps: int,
    model_dir: Path,
    ds_config: dict[str, Any],
    precision: str,
    *,
    notes: list[str] | None = None,
) -> tuple[Any, Any]:
    """DeepSpeed engine around the (peft-wrapped) model, our AdamW and LR schedule.

    Decisions worth telling the user (gradient checkpointing under auto) go to `notes`."""
    import deepspeed

    hp = spec.hyperparameters
    cuda = torch.cuda.is_available()
    if not cuda:
        skip_cpu_shm_comm()
    # Ray Train already made the process group; DeepSpeed adopts it (its config reads the
    # world size from it, and ZeRO-3's HfDeepSpeedConfig parses the config right below).
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    dschf = None
    if spec.deepspeed.zero_stage == 3:
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        # Must exist before from_pretrained so weights load straight into ZeRO-3 partitions.
        dschf = HfDeepSpeedConfig(ds_config)  # type: ignore[no-untyped-call]
    base = load_base_model(
        model_dir,
        spec.model,
        dtype=DTYPES[precision],
        quantize_4bit=spec.method.type == "qlora",
    )
    checkpointing, note = gradient_checkpointing(spec, base, precision, dist.get_world_size())
    if note is not None and notes is not None:
        notes.append(note)
    kernels = use_fast_kernels(base, cuda=cuda, liger=hp.liger_kernels)
    model = apply_method(base, spec.method, gradient_checkpointing=checkpointing)
    loss = use_loss_head(model, cuda=cuda, liger=hp.liger_kernels)
    if notes is not None:
        notes.append(f"{kernels}; {loss}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(parameters, **adamw_options(hp, cuda=cuda))
    warmup = warmup_steps(total_steps, hp.warmup_ratio)

    def schedule(step: int) -> float:
        return lr_multiplier(step, total=total_steps, warmup=warmup, kind=hp.lr_scheduler)

    engine, optimizer, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=parameters,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule)),
    )
    engine._finetune_hf_ds_config = dschf
    if hp.torch_compile:
        # DeepSpeed compiles the module it wraps, so its hooks (ZeRO) stay outside the graph.
        engine.compile()
    return engine, model


def skip_cpu_shm_comm() -> None:
    """Keep DeepSpeed from compiling its CPU shared-memory all-reduce when it sets up comms.

    That C++ op serves only DeepSpeed's inference tensor parallelism (inference_all_reduce,
    which falls back to torch.distributed without it); training reduces through the process
    group. Built on first use with gcc, it cost 30-80 s of every fresh install's first CPU
    run (and of every run where the torch_extensions cache was built by another install)."""
    # By module path: the attribute deepspeed.comm.torch is torch itself (a star import).
    backend = importlib.import_module("deepspeed.comm.torch")
    backend.build_shm_op = lambda: None  # type: ignore[attr-defined]


def gradient_checkpointing(
    spec: api.FineTuneJobSpec, base: Any, precision: str, world: int
) -> tuple[bool, str | None]:
    """The spec's gradientCheckpointing, with `auto` decided by memory_estimate."""
    hp = spec.hyperparameters
    if hp.gradient_checkpointing != "auto":
        return bool(hp.gradient_checkpointing), None
    _, total = count_parameters(base)
    shape = ModelShape.of(base.config, total)
    micro = plan_batch(hp.batch_size, world, hp.micro_batch_size).micro_batch_size
    # A DPO row is a pair: two conversations of up to maxSeqLength each.
    sequences = micro * (2 if spec.method.objective == "dpo" else 1)
    estimate = None
    if shape is not None:
        estimate = estimate_memory(
            shape,
            method=spec.method.type,
            precision=precision,
            tokens=sequences * spec.dataset.max_seq_length,
            zero_stage=spec.deepspeed.zero_stage,
            world=world,
        )
    return resolve_checkpointing("auto", estimate, device_memory_bytes(world))


def device_memory_bytes(world: int) -> float:
    """This rank's memory: its GPU's, or on CPU an equal share of the machine's."""
    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / max(1, world)
