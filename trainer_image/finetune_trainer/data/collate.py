"""Batches of rows as tensors, with a block-diagonal causal mask for packed documents.

transformers takes a 4-D attention mask as given (it skips its own mask building), so
the mask must be additive and in the model's dtype: 0 where a query may attend, the
dtype's minimum where not. Eager attention adds it to the scores; SDPA accepts it as a
float mask. Every query can at least see itself (padding included), so no softmax row is
empty and nothing turns into NaN. The mask costs BxLxL elements: at L=2048 and a
micro-batch of 8 that is 128 MiB in fp32, 64 MiB in bf16.
"""

from __future__ import annotations

import torch

from finetune_trainer.data.packing import Row
from finetune_trainer.data.tokenize import IGNORE_INDEX


def collate_rows(
    rows: list[Row], pad_token_id: int, *, mask_dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """input_ids, labels, position_ids, a (B,1,L,L) additive mask, num_tokens, num_loss_tokens."""
    length = max(len(row["input_ids"]) for row in rows)
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    # Document number of every token; padding gets -1 and is then isolated token by token.
    documents = torch.full((batch, length), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"])
        labels[i, :n] = torch.tensor(row["labels"])
        positions = torch.tensor(row["position_ids"])
        position_ids[i, :n] = positions
        documents[i, :n] = torch.cumsum((positions == 0).long(), dim=0) - 1
    causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
    same_document = documents.unsqueeze(2) == documents.unsqueeze(1)
    real = (documents >= 0).unsqueeze(2) & (documents >= 0).unsqueeze(1)
    allowed = (same_document & real & causal) | torch.eye(length, dtype=torch.bool)
    mask = torch.zeros((batch, 1, length, length), dtype=mask_dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(mask_dtype).min)
    not_padding = documents >= 0
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": mask,
        "num_tokens": not_padding.sum(),
        "num_loss_tokens": (labels[:, 1:] != IGNORE_INDEX).sum(),
    }
