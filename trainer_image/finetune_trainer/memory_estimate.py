"""`gradientCheckpointing: auto`: turn recomputation on only when memory needs it.

Checkpointing keeps each decoder layer's input and recomputes the rest in backward: about
a third more compute for a fraction of the activations. Whether a run needs it follows
from a per-rank estimate, made before the model is wrapped:

- model states, bytes per parameter: the weights (2 in bf16/fp16, 4 in fp32, 0.5 for a
  4-bit QLoRA base); for each trained parameter its gradient (as the weight) and AdamW's
  fp32 master copy and two moments (12, or 8 when the weights already are fp32). ZeRO
  stage 1 splits the optimizer states over the ranks, stage 2 the gradients too, stage 3
  the weights too. LoRA trains about 1 % of the weights (r=16 on every linear layer).
- activations, bytes per token per decoder layer: about 10 x hidden + 4 x intermediate
  values (the norms' inputs and outputs, q/k/v, the attention output, the residuals; the
  MLP's gate, up, activation and product), in the activations' dtype; attention itself
  needs O(L) with a fused kernel. With checkpointing only the layer inputs stay
  (hidden values per token and layer) plus one layer's worth while it is recomputed.
- logits: vocabulary x tokens in the activations' dtype, its fp32 copy and its gradient.

Tokens are micro batch x maxSeqLength (packed rows fill it). Checkpointing goes on when
states plus activations without it pass 85 % of the device's memory (the rest is the
allocator's slack, the CUDA context and temporary buffers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Fraction of the device's memory the estimate may fill before checkpointing turns on.
HEADROOM = 0.85
LORA_TRAINED_FRACTION = 0.01
ACTIVATION_VALUES_PER_HIDDEN = 10
ACTIVATION_VALUES_PER_INTERMEDIATE = 4


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    parameters: int

    @classmethod
    def of(cls, config: Any, parameters: int) -> ModelShape | None:
        """From a transformers config (Llama, Qwen, Mistral, GPT-2 names); None if unknown."""
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
        vocab = getattr(config, "vocab_size", None)
        if not (layers and hidden and vocab):
            return None
        intermediate = (
            getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None)
        ) or 4 * hidden
        return cls(layers, hidden, intermediate, vocab, parameters)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank."""

    states: float
    activations: float  # without checkpointing
    checkpointed_activations: float

    def needs_checkpointing(self, device_bytes: float) -> bool:
        return self.states + self.activations > HEADROOM * device_bytes


def estimate_memory(
    shape: ModelShape,
    *,
    method: str,
    precision: str,
    tokens: int,
    zero_stage: int,
    world: int,
) -> MemoryEstimate:
    """Model states and activations of one rank training on `tokens` tokens per micro batch."""
    act_bytes = 4 if precision == "fp32" else 2
    weight_bytes = 0.5 if method == "qlora" else act_bytes
    trained = shape.parameters * (1.0 if method == "full" else LORA_TRAINED_FRACTION)
    optimizer_bytes = 8 if act_bytes == 4 else 12  # fp32 moments (+ an fp32 master copy)
    weights = shape.parameters * weight_bytes / (world if zero_stage >= 3 else 1)
    gradients = trained * act_bytes / (world if zero_stage >= 2 else 1)
    optimizer = trained * optimizer_bytes / (world if zero_stage >= 1 else 1)
    per_layer = (
        tokens
        * act_bytes
        * (
            ACTIVATION_VALUES_PER_HIDDEN * shape.hidden
            + ACTIVATION_VALUES_PER_INTERMEDIATE * shape.intermediate
        )
    )
    logits = tokens * shape.vocab * (act_bytes + 4 + 4)
    return MemoryEstimate(
        states=weights + gradients + optimizer,
        activations=shape.layers * per_layer + logits,
        checkpointed_activations=shape.layers * tokens * shape.hidden * act_bytes
        + per_layer
        + logits,
    )


def resolve_checkpointing(
    requested: bool | str, estimate: MemoryEstimate | None, device_bytes: float
) -> tuple[bool, str | None]:
    """Whether to checkpoint, and for `auto` a note saying why."""
    if requested != "auto":
        return bool(requested), None
    if estimate is None:
        return True, "gradient checkpointing on: the model's shape is unknown to the estimate"
    on = estimate.needs_checkpointing(device_bytes)
    gib = 2**30
    return on, (
        f"gradient checkpointing {'on' if on else 'off'}: estimated "
        f"{estimate.states / gib:.1f} GiB of weights and optimizer state plus "
        f"{estimate.activations / gib:.1f} GiB of activations without it, "
        f"{device_bytes / gib:.1f} GiB on the device"
    )
