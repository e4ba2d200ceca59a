"""Batches of rows as tensors, with the packed documents' boundaries and no LxL mask.

Document boundaries come from the position ids (they restart at 0 where a document
begins) and travel as a `PackedDocuments`, which the packed attention kernels read
(`finetune_trainer.attention`). Padding at the end of a row is one more segment: it
attends only to itself, carries no loss and so never touches a real token.

`dense_mask_dtype` adds the old (B,1,L,L) additive mask, for models whose attention does
not go through transformers' interface and as the reference in tests: transformers takes
a 4-D mask as given, 0 where a query may attend, the dtype's minimum where not. It costs
BxLxL elements (128 MiB in fp32 at L=2048 and a micro batch of 8).
"""

from __future__ import annotations

import torch

from finetune_trainer.attention import PackedDocuments, dense_document_mask
from finetune_trainer.data.packing import Row
from finetune_trainer.data.tokenize import IGNORE_INDEX


def collate_rows(
    rows: list[Row], pad_token_id: int, *, dense_mask_dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor | PackedDocuments]:
    """input_ids, labels, position_ids, packed_documents, num_tokens, num_loss_tokens (and
    attention_mask when `dense_mask_dtype` is given)."""
    length = max(len(row["input_ids"]) for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        position_ids[i, :n] = torch.tensor(row["position_ids"])
    documents = PackedDocuments.from_rows([row["position_ids"] for row in rows], length)
    collated: dict[str, torch.Tensor | PackedDocuments] = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "packed_documents": documents,
        "num_tokens": torch.tensor(sum(len(row["input_ids"]) for row in rows)),
        "num_loss_tokens": (labels[:, 1:] != IGNORE_INDEX).sum(),
    }
    if dense_mask_dtype is not None:
        collated["attention_mask"] = dense_document_mask(documents, dense_mask_dtype)
    return collated
