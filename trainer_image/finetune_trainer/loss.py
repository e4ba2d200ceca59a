"""The token loss without full-vocabulary logits: cross-entropy chunked through the head.

Full fp32 logits for a micro batch are B*L*V floats (16 GiB at B=8, L=4096, V=128k). Here
the head runs over a few hundred loss tokens at a time; each chunk's logits give its
loss, its correct predictions (the argmax, no second pass) and, when training, the
gradients of hidden states and head weight at once, so nothing of V size outlives its
chunk and the head's matmul is not repeated in backward.

The head module itself computes it (`LossHead` replaces the model's output Linear with the
same parameters under the same names): ZeRO-3 gathers a module's weight only around that
module's forward and backward, so the loss must happen inside it. On CUDA, Liger's fused
linear cross-entropy can take the chunk loop's place (`ligerKernels`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# fp32 logits (and their gradient) per chunk stay near this size: 256 tokens at V=128k.
CHUNK_BYTES = 128 << 20


def chunk_tokens(vocab_size: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    return max(16, chunk_bytes // (4 * vocab_size))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """(summed loss, correct count) of `targets` under logits hidden @ weight.T + bias,
    a chunk of tokens at a time; gradients are computed in forward and scaled in backward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if want_weight else None
        grad_bias = (
            torch.zeros_like(bias, dtype=torch.float32) if bias is not None and want_bias else None
        )
        summary = torch.zeros(2, dtype=torch.float32, device=hidden.device)  # loss, correct
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start : start + chunk], targets[start : start + chunk]
            logits = F.linear(h, weight, bias).float()
            logsumexp = logits.logsumexp(-1)
            picked = logits.gather(1, t.unsqueeze(1)).squeeze(1)
            summary[0] += (logsumexp - picked).sum()
            summary[1] += (logits.argmax(-1) == t).sum()
            if not (want_hidden or want_weight or want_bias):
                continue
            # d loss / d logits = softmax - one_hot(target), reusing the logits' memory.
            grad_logits = logits.sub_(logsumexp.unsqueeze(1)).exp_()
            grad_logits[torch.arange(len(t), device=t.device), t] -= 1
            if grad_bias is not None:
                grad_bias += grad_logits.sum(0)
            grad_logits = grad_logits.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[start : start + chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad_logits.t().float(), h.float())
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        return summary

    @staticmethod
    def backward(ctx: Any, grad_summary: torch.Tensor) -> tuple[Any, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_summary[0]  # the correct count has no gradient
        return (
            None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
            None if grad_bias is None else (grad_bias * scale).to(ctx.bias_dtype),
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """[summed token loss, correctly predicted tokens] of `targets` (N,) given the head's
    input `hidden` (N, H); every target counts. Differentiable in the loss only."""
    chunk = chunk or chunk_tokens(weight.shape[0])
    if not torch.is_grad_enabled():  # evaluation: no gradients to compute along the way
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    apply: Any = _ChunkedLinearCrossEntropy.apply  # torch leaves apply unannotated
    summary: torch.Tensor = apply(hidden, weight, bias, targets, chunk)
    return summary


def liger_linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """The same [loss, correct] from Liger's fused Triton kernel (CUDA only)."""
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    out = liger_fused_linear_cross_entropy(
        hidden, weight, targets, bias, reduction="sum", return_token_accuracy=True
    )
    # Every target counts, so the accuracy times their number is the correct count.
    correct = (out.token_accuracy.detach() * targets.numel()).round()
    return torch.stack([out.loss.float(), correct.float()])


def token_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    *,
    chunk: int | None = None,
) -> torch.Tensor:
    """log p(target) of each of `targets` (N,) given the head's input `hidden` (N, H), in
    fp32. DPO weighs every sequence's tokens by its own factor, so the gradients cannot be
    taken ahead as in the summed loss; instead each chunk's logits are recomputed in
    backward (activation checkpointing), so still nothing of V size outlives its chunk."""
    from torch.utils.checkpoint import checkpoint

    chunk = chunk or chunk_tokens(weight.shape[0])
    parts = []
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        if torch.is_grad_enabled():
            parts.append(checkpoint(_chunk_log_probs, h, weight, bias, t, use_reentrant=False))
        else:
            parts.append(_chunk_log_probs(h, weight, bias, t))
    return torch.cat(parts) if parts else hidden.new_zeros(0, dtype=torch.float32)


def _chunk_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return logits.gather(1, targets.unsqueeze(1)).squeeze(1) - logits.logsumexp(-1)


@dataclass
class LossRequest:
    """Which of the head's input positions (flattened B*L) predict which target token;
    `per_token`: the log-probability of each target instead of [summed loss, correct]."""

    positions: torch.Tensor
    targets: torch.Tensor
    per_token: bool = False


class LossHead(torch.nn.Module):
    """The model's output Linear, same weight and bias under the same names; inside
    `computing_loss` its forward returns [summed loss, correct] (or, per_token, each
    target's log-probability) instead of logits."""

    def __init__(self, head: torch.nn.Linear, *, fused: bool = False) -> None:
        super().__init__()
        self.weight = head.weight
        self.bias = head.bias
        self.in_features, self.out_features = head.in_features, head.out_features
        self.fused = fused  # Liger's kernel instead of the chunk loop
        self.request: LossRequest | None = None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        request = self.request
        if request is None:  # generation, or any caller that wants logits
            return F.linear(hidden, self.weight, self.bias)
        self.request = None  # one forward consumes a request
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, request.positions)
        if request.per_token:
            return token_log_probs(picked, self.weight, self.bias, request.targets)
        if self.fused:
            return liger_linear_cross_entropy(picked, self.weight, self.bias, request.targets)
        return linear_cross_entropy(picked, self.weight, self.bias, request.targets)

    @contextmanager
    def computing_loss(self, request: LossRequest) -> Iterator[None]:
        self.request = request
        try:
            yield
        finally:
            self.request = None


# Causal LMs whose forward applies the head to the hidden states and returns the result
# untouched (no logit soft-capping or scaling), so the head may return the loss instead.
PLAIN_HEAD_MODELS = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "phi3"}
)


def install_loss_head(model: Any, *, fused: bool = False) -> bool:
    """Give a transformers causal LM a LossHead; False (logits as before) for other models
    or a head that is not a plain Linear (e.g. LoRA on lm_head)."""
    head = model.get_output_embeddings()
    if isinstance(head, LossHead):
        return True
    if model.config.model_type not in PLAIN_HEAD_MODELS or type(head) is not torch.nn.Linear:
        return False
    model.set_output_embeddings(LossHead(head, fused=fused))
    return True


def find_loss_head(model: Any) -> LossHead | None:
    """The LossHead under a DeepSpeed engine and/or a peft wrapper, if one was installed."""
    while hasattr(model, "module") and not hasattr(model, "get_output_embeddings"):
        model = model.module  # a DeepSpeed engine
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if getter else None
    return head if isinstance(head, LossHead) else None
