"""Attention over packed rows without an LxL mask: each document attends causally to itself.

A packed row holds several documents whose position ids restart at 0. Instead of a dense
(B,1,L,L) mask (quadratic memory, and on CUDA it rules FlashAttention out), the document
boundaries travel as a `PackedDocuments` in the model's forward keyword arguments, which
transformers hands unchanged to the attention function registered here. One kernel per
device, chosen by `select_attention`:

- flash_varlen (CUDA, `flash_attn` importable): `flash_attn_varlen_func` over the batch
  flattened to one sequence, with cu_seqlens at document edges (FlexAttention in fp32).
- flex (CUDA without flash_attn): compiled FlexAttention with a document block mask.
- sdpa_documents (CPU): causal SDPA on each document's slice. Measured on torch 2.13:
  FlexAttention has no backward on CPU, nested-tensor SDPA refuses is_causal, and the
  dense mask does L^2 work; a causal slice runs torch's CPU flash kernel, O(L) memory and
  sum(l_i^2) work.

Without a `PackedDocuments` (generation, or a caller with a plain mask) the function is
ordinary causal attention, so a model switched to it still generates.
"""

from __future__ import annotations

import importlib.util
import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F

SDPA_DOCUMENTS = "finetune_sdpa_documents"
FLEX_DOCUMENTS = "finetune_flex_documents"
FLASH_VARLEN = "finetune_flash_varlen"
PACKED_PATHS = (SDPA_DOCUMENTS, FLEX_DOCUMENTS, FLASH_VARLEN)


@dataclass
class PackedDocuments:
    """Where documents begin and end in a (B, L) batch; padding is one more segment."""

    lengths: list[list[int]]  # per row, segment lengths summing to L
    cu_seqlens: torch.Tensor  # int32 edges of every segment in the batch flattened to B*L
    document_ids: torch.Tensor  # (B, L) int32, a distinct number per segment
    max_length: int  # the longest segment, for flash_attn
    block_mask: Any = field(default=None, repr=False)  # FlexAttention's, built on first use

    @classmethod
    def from_rows(cls, row_positions: list[list[int]], length: int) -> PackedDocuments:
        lengths: list[list[int]] = []
        for positions in row_positions:
            starts = [i for i, p in enumerate(positions) if p == 0] or [0]
            edges = [*starts, len(positions)]
            segments = [b - a for a, b in itertools.pairwise(edges) if b > a]
            if length > len(positions):
                segments.append(length - len(positions))
            lengths.append(segments)
        flat = [n for row in lengths for n in row]
        cu_seqlens = torch.tensor([0, *flat], dtype=torch.int32).cumsum(0, dtype=torch.int32)
        ids = torch.repeat_interleave(
            torch.arange(len(flat), dtype=torch.int32), torch.tensor(flat)
        )
        return cls(lengths, cu_seqlens, ids.view(len(lengths), length), max(flat))

    def pin_memory(self) -> PackedDocuments:
        return replace(
            self,
            cu_seqlens=self.cu_seqlens.pin_memory(),
            document_ids=self.document_ids.pin_memory(),
        )

    def to(self, device: torch.device, *, non_blocking: bool = False) -> PackedDocuments:
        return replace(
            self,
            cu_seqlens=self.cu_seqlens.to(device, non_blocking=non_blocking),
            document_ids=self.document_ids.to(device, non_blocking=non_blocking),
            block_mask=None,
        )


def dense_document_mask(documents: PackedDocuments, dtype: torch.dtype) -> torch.Tensor:
    """The (B,1,L,L) additive mask equivalent to `documents`: the O(L^2) reference path."""
    ids = documents.document_ids
    length = ids.shape[1]
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=ids.device))
    allowed = (ids.unsqueeze(2) == ids.unsqueeze(1)) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=ids.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def select_attention(device: torch.device) -> str:
    """The fastest packed kernel this device can run (see the module docstring)."""
    if device.type != "cuda":
        return SDPA_DOCUMENTS
    return FLASH_VARLEN if importlib.util.find_spec("flash_attn") else FLEX_DOCUMENTS


def use_packed_attention(model: Any, path: str) -> bool:
    """Switch `model` (a transformers PreTrainedModel) to the packed kernel `path`; False
    when its attention does not go through transformers' interface (remote code, old
    architectures), which then keeps the dense mask."""
    if not getattr(model, "_supports_attention_backend", False):
        return False
    register()
    model.config._attn_implementation = path
    return True


def uses_packed_attention(model: Any) -> bool:
    """Whether `model` (maybe under DeepSpeed's engine and peft) runs a packed kernel."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in PACKED_PATHS


def register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(SDPA_DOCUMENTS, sdpa_documents_attention)
    AttentionInterface.register(FLEX_DOCUMENTS, flex_documents_attention)
    AttentionInterface.register(FLASH_VARLEN, flash_varlen_attention)


def _repeat_kv(key: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Grouped-query keys/values repeated up to the query heads."""
    groups = query.shape[1] // key.shape[1]
    return key if groups == 1 else key.repeat_interleave(groups, dim=1)


def sdpa_documents_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_documents: PackedDocuments | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each document's slice of each row; (B, L, H, D) like transformers'."""
    if packed_documents is None:
        return _plain_causal(query, key, value, attention_mask, dropout, scaling)
    key, value = _repeat_kv(key, query), _repeat_kv(value, query)
    rows = []
    for b, lengths in enumerate(packed_documents.lengths):
        pieces = zip(
            torch.split(query[b : b + 1], lengths, dim=2),
            torch.split(key[b : b + 1], lengths, dim=2),
            torch.split(value[b : b + 1], lengths, dim=2),
            strict=True,
        )
        rows.append(
            torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q, k, v, dropout_p=dropout, is_causal=True, scale=scaling
                    )
                    for q, k, v in pieces
                ],
                dim=2,
            )
        )
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


_compiled_flex: Any = None


def flex_documents_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_documents: PackedDocuments | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """FlexAttention with a block mask that skips every block across documents."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if packed_documents is None:
        return _plain_causal(query, key, value, attention_mask, dropout, scaling)
    if packed_documents.block_mask is None:
        ids = packed_documents.document_ids

        def same_document_causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
            return (ids[b, q_idx] == ids[b, kv_idx]) & (q_idx >= kv_idx)

        batch, length = ids.shape
        packed_documents.block_mask = create_block_mask(
            same_document_causal, batch, None, length, length, device=ids.device
        )
    # Uncompiled FlexAttention materialises the scores; only the compiled kernel is O(L).
    if query.is_cuda and _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    kernel = _compiled_flex if query.is_cuda else flex_attention
    output = kernel(
        query,
        key,
        value,
        block_mask=packed_documents.block_mask,
        scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None


def flash_varlen_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_documents: PackedDocuments | None = None,
    varlen_kernel: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """flash_attn's varlen kernel over the batch flattened to one (B*L, H, D) sequence;
    `varlen_kernel` stands in for flash_attn_varlen_func (same contract) where that is absent."""
    if packed_documents is None:
        return _plain_causal(query, key, value, attention_mask, dropout, scaling)
    if varlen_kernel is None and query.dtype not in (torch.float16, torch.bfloat16):
        # flash_attn runs half precision only; an fp32 run takes the FlexAttention kernel.
        return flex_documents_attention(
            module, query, key, value, None, dropout, scaling, packed_documents
        )
    if varlen_kernel is None:
        import flash_attn

        varlen_kernel = flash_attn.flash_attn_varlen_func
    batch, heads, length, dim = query.shape

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], dim)

    cu, longest = packed_documents.cu_seqlens, packed_documents.max_length
    output = varlen_kernel(
        flat(query),
        flat(key),
        flat(value),
        cu,
        cu,
        longest,
        longest,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=True,
    )
    return output.view(batch, length, heads, dim), None


def _plain_causal(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float,
    scaling: float | None,
) -> tuple[torch.Tensor, None]:
    """Causal attention for calls without packed documents: generation with a cache (the
    queries are the last q_len of kv_len positions) and a 2-D padding mask, or a 4-D mask
    built by the caller."""
    key, value = _repeat_kv(key, query), _repeat_kv(value, query)
    q_len, kv_len = query.shape[2], key.shape[2]
    if attention_mask is not None and attention_mask.dim() == 4:
        mask = attention_mask[..., :kv_len]
    else:
        rows = torch.arange(q_len, device=query.device).unsqueeze(1) + (kv_len - q_len)
        mask = torch.arange(kv_len, device=query.device).unsqueeze(0) <= rows
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, :kv_len].bool()
        # A query whose every key is padding would softmax over nothing; let it see itself.
        mask = mask | (torch.arange(kv_len, device=query.device).unsqueeze(0) == rows)
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return output.transpose(1, 2).contiguous(), None
