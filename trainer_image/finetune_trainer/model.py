"""Find the base model wherever it lives, load it, and wrap it for the chosen method."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer.errors import ModelSourceError, StorageError
from finetune_trainer.storage import fetch_to_cache, resolve_local

MODEL_CACHE_ENV = "FINETUNE_MODEL_CACHE"
ALL_LINEAR = "all-linear"


def resolve_model_dir(model: api.ModelSpec, *, base_dir: Path | None = None) -> Path:
    """A local Hugging Face format directory for `model.source` (downloaded when remote)."""
    source = model.source
    cache = Path(os.environ.get(MODEL_CACHE_ENV, Path.home() / ".cache" / "finetune" / "models"))
    if source.startswith("hf://"):
        local = _download_from_hub(source.removeprefix("hf://"), model.revision)
    elif source.startswith("s3://"):
        try:
            local = fetch_to_cache(source, cache, base_dir=base_dir)
        except StorageError as error:
            raise ModelSourceError(f"spec.model.source: {error}") from error
    else:
        local = resolve_local(source, base_dir=base_dir)
    if not (local / "config.json").is_file():
        raise ModelSourceError(
            f"spec.model.source: {source} ({local}) is not a Hugging Face model directory "
            "(no config.json)"
        )
    return local


def _download_from_hub(repo_id: str, revision: str) -> Path:
    """snapshot_download honours HF_HUB_OFFLINE (cache only) and HF_TOKEN from the Secret."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    try:
        return Path(snapshot_download(repo_id, revision=revision, token=token))
    except LocalEntryNotFoundError as error:
        raise ModelSourceError(
            f"spec.model.source: hf://{repo_id}@{revision} is not in the local Hugging Face "
            f"cache and the hub cannot be reached (HF_HUB_OFFLINE or no network): {error}"
        ) from error
    except HfHubHTTPError as error:
        raise ModelSourceError(
            f"spec.model.source: hf://{repo_id}@{revision}: {error} (for a private model put "
            "HF_TOKEN into the spec.model.secretRef Secret)"
        ) from error
    except (ValueError, OSError) as error:  # a malformed repo id, an unwritable cache
        raise ModelSourceError(f"spec.model.source: hf://{repo_id}@{revision}: {error}") from error


def load_tokenizer(
    model_dir: Path | str,
    model: api.ModelSpec,
    chat_template: str | None = None,
    *,
    revision: str | None = None,
) -> Any:
    """The tokenizer in `model_dir` (a folder, or a hub repo id at `revision`) with the job's
    chat template and a pad token; ModelSourceError naming spec.model.source if it won't load."""
    from transformers import AutoTokenizer

    options = {"revision": revision} if revision else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=model.trust_remote_code, **options
        )
    except (OSError, ValueError) as error:  # missing files, malformed JSON, unknown class
        lines = str(error).strip().splitlines()
        raise ModelSourceError(
            f"spec.model.source: cannot load the tokenizer of {model.source}: "
            f"{lines[0] if lines else type(error).__name__}"
        ) from error
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        # Padding never reaches the loss (labels IGNORE_INDEX, attention masked): eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    model_dir: Path, model: api.ModelSpec, *, dtype: Any, quantize_4bit: bool
) -> Any:
    """The base model in `dtype`; NF4-quantised through bitsandbytes for qlora."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    if quantize_4bit:
        import torch
        from transformers import BitsAndBytesConfig

        # bitsandbytes quantises while loading onto the GPU, so load straight onto this rank's.
        kwargs["device_map"] = {"": torch.cuda.current_device()}
        # transformers leaves this constructor unannotated.
        kwargs["quantization_config"] = BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def linear_module_names(model: Any) -> list[str]:
    """Leaf names of every linear layer except the output head (what all-linear means)."""
    import torch

    linear_types: tuple[type, ...] = (torch.nn.Linear,)
    try:
        from transformers.pytorch_utils import Conv1D  # GPT-2 style "linear" layers

        linear_types += (Conv1D,)
    except ImportError:
        pass
    try:
        import bitsandbytes as bnb

        linear_types += (bnb.nn.Linear4bit,)
    except ImportError:
        pass
    head = model.get_output_embeddings()
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, linear_types) and module is not head
    }
    return sorted(names)


def resolve_target_modules(model: Any, requested: list[str]) -> list[str]:
    """The module names LoRA adapts; every requested name must exist in the model."""
    linear = linear_module_names(model)
    if ALL_LINEAR in requested:
        return linear
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in requested if name not in present]
    if missing:
        raise ModelSourceError(
            f"spec.method.lora.targetModules: {', '.join(missing)} not found in the model; "
            f"its linear layers are: {', '.join(linear)} (or use all-linear)"
        )
    return list(requested)


def apply_method(base: Any, method: api.MethodSpec, *, gradient_checkpointing: bool) -> Any:
    """Wrap the base for lora/qlora (only adapters train) or leave it whole for full."""
    if gradient_checkpointing:
        if hasattr(base, "activation_checkpointing_enable"):  # the transformers 5 name
            base.activation_checkpointing_enable({"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable({"use_reentrant": False})
        base.config.use_cache = False
    if method.type == "full":
        return base
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method.type == "qlora":
        # peft leaves this function unannotated.
        base = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            base, use_gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        # Frozen embeddings give inputs without grad; checkpointed blocks still need one.
        base.enable_input_require_grads()
    config = LoraConfig(
        r=method.lora.r,
        # peft annotates an int but only computes alpha / r with it, so a float is honoured.
        lora_alpha=method.lora.alpha,  # type: ignore[arg-type]
        lora_dropout=method.lora.dropout,
        target_modules=resolve_target_modules(base, method.lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; ZeRO-3 partitioned tensors report their full size."""
    trainable = total = 0
    for parameter in model.parameters():
        n = getattr(parameter, "ds_numel", None) or parameter.numel()
        total += n
        if parameter.requires_grad:
            trainable += n
    return trainable, total
