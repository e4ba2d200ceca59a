"""Write the trained weights: adapter/ (PEFT format) and model/ (full, or base + adapter merged).

Collective under ZeRO-3, where parameters are partitioned and must be gathered first;
only rank 0 writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from finetune_operator import api

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


def save_model_artifacts(
    engine: Any,
    model: Any,
    spec: api.FineTuneJobSpec,
    tokenizer: Any,
    model_dir: Path,
    output_dir: Path,
    *,
    rank: int,
) -> None:
    """adapter/ for lora and qlora, model/ for full or when mergeAdapter is set.

    `model_dir` is the base model's folder (what a merge folds the adapter into)."""
    zero3 = spec.deepspeed.zero_stage == 3
    if spec.method.type == "full":
        state_dict = engine._zero3_consolidated_16bit_state_dict() if zero3 else None
        if rank == 0:
            _save_full(model, state_dict, tokenizer, output_dir / MODEL_DIR)
        return
    adapter_dir = output_dir / ADAPTER_DIR
    trainable = [p for p in model.parameters() if p.requires_grad]
    if zero3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(trainable, modifier_rank=None):
            if rank == 0:
                model.save_pretrained(adapter_dir)
    elif rank == 0:
        model.save_pretrained(adapter_dir)
    if rank == 0:
        tokenizer.save_pretrained(adapter_dir)
        if spec.output.merge_adapter:
            merge_adapter(model_dir, adapter_dir, output_dir / MODEL_DIR, spec.model, tokenizer)


def _save_full(model: Any, state_dict: dict[str, Any] | None, tokenizer: Any, target: Path) -> None:
    model.save_pretrained(target, state_dict=state_dict)
    tokenizer.save_pretrained(target)


def merge_adapter(
    model_dir: Path, adapter_dir: Path, target: Path, model_spec: api.ModelSpec, tokenizer: Any
) -> None:
    """Reload the unquantised base on CPU, fold the saved adapter in, save a plain model.

    Working from the saved files (not the training engine) keeps this the same for every
    ZeRO stage and for qlora, whose training base is 4-bit and cannot be merged exactly.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # Under ZeRO-3 from_pretrained would partition the weights collectively, but only rank 0
    # is here: training is over, so load as a plain model.
    unset_hf_deepspeed_config()  # type: ignore[no-untyped-call]
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, trust_remote_code=model_spec.trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(target)
    tokenizer.save_pretrained(target)
