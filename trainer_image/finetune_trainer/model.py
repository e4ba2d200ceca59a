"""Find the base model wherever it lives, load it, and wrap it for the chosen method."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer.errors import MethodUnavailable, ModelSourceError, StorageError
from finetune_trainer.storage import fetch_to_cache, resolve_local

MODEL_CACHE_ENV = "FINETUNE_MODEL_CACHE"
ALL_LINEAR = "all-linear"
# Any one of these makes a folder hold a tokenizer (fast, sentencepiece, BPE or WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# A safetensors header is a few KB to a few MB; a larger length means a corrupt file.
MAX_SAFETENSORS_HEADER = 100 << 20


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
    check_model_files(local)
    return local


def check_model_files(model_dir: Path) -> None:
    """Refuse, naming the folder or file, a model without a tokenizer or with weights cut
    short, before any cluster starts rather than deep inside a worker's loading."""
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise ModelSourceError(
            f"spec.model.source: {model_dir}: no tokenizer (tokenizer.json / "
            "tokenizer_config.json); copy the tokenizer files next to config.json"
        )
    for file in sorted(model_dir.glob("*.safetensors")):
        problem = _safetensors_problem(file)
        if problem:
            raise ModelSourceError(
                f"spec.model.source: {file}: {problem}: corrupt/truncated "
                "(copy or download the model again)"
            )


def _safetensors_problem(file: Path) -> str | None:
    """What is wrong with a safetensors file's framing (its header must cover the file
    exactly), or None; reads the header only, never the tensors."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        if size < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (length,) = struct.unpack("<Q", handle.read(8))
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            return f"header length {length} does not fit the file's {size} bytes"
        try:
            header = json.loads(handle.read(length))
        except ValueError:  # not UTF-8, or not JSON
            return "the header is not JSON"
    if not isinstance(header, dict):
        return "the header is not a JSON object"
    offsets = [t.get("data_offsets") for k, t in header.items() if k != "__metadata__"]
    if not all(isinstance(o, list) and len(o) == 2 for o in offsets):
        return "the header has a tensor without data_offsets"
    expected = 8 + length + max((int(o[1]) for o in offsets), default=0)
    if expected != size:
        return f"{size} bytes where its header describes {expected}"
    return None


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
    if isinstance(model_dir, Path) and model_dir.is_dir():
        check_model_files(model_dir)
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
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_model_files(model_dir)

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
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    except (OSError, SafetensorError) as error:  # no weights file, a shard missing or corrupt
        lines = str(error).strip().splitlines()
        raise ModelSourceError(
            f"spec.model.source: {model_dir}: cannot load the weights: "
            f"{lines[0] if lines else type(error).__name__}"
        ) from error


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


def use_fast_kernels(base: Any, *, cuda: bool, liger: bool) -> str:
    """Packed attention for `base` (and Liger's RMSNorm, RoPE and SwiGLU on CUDA when
    `liger`), before peft wraps it; a line naming what runs, for the log."""
    import torch

    from finetune_trainer.attention import select_attention, use_packed_attention

    path = select_attention(torch.device("cuda" if cuda else "cpu"))
    attention = path if use_packed_attention(base, path) else "dense-mask (model has no hook)"
    kernels = ""
    if liger and cuda:
        try:
            from liger_kernel.transformers import _apply_liger_kernel_to_instance
        except ImportError as error:
            raise MethodUnavailable(
                "spec.hyperparameters.ligerKernels: liger-kernel is not installed in the "
                "trainer image (pip install 'finetune-operator[gpu]')"
            ) from error
        # The loss is fused by our LossHead, so Liger's own cross-entropy patches stay off.
        _apply_liger_kernel_to_instance(
            model=base, rope=True, rms_norm=True, swiglu=True,
            cross_entropy=False, fused_linear_cross_entropy=False,
        )  # fmt: skip
        kernels = ", Liger RMSNorm/RoPE/SwiGLU"
    return f"attention {attention}{kernels}"


def use_loss_head(model: Any, *, cuda: bool, liger: bool) -> str:
    """The chunked (or, with Liger on CUDA, fused) loss head, after peft; a line for the log."""
    from finetune_trainer.loss import install_loss_head

    fused = liger and cuda
    if not install_loss_head(model, fused=fused):
        return "loss from full logits (model not known to keep its head plain)"
    return "loss Liger fused linear cross-entropy" if fused else "loss chunked cross-entropy"
