"""Rows for training: over-length policy per document, then optional packing.

A row is {"input_ids", "labels", "position_ids"}; position ids restart at 0 for each
packed document, which is how collate_rows knows where documents begin. The first
label of every document is masked: in a packed row it would otherwise be predicted from
the previous document's last token.
"""

from __future__ import annotations

from typing import Any

from finetune_operator import api

from finetune_trainer.data.tokenize import IGNORE_INDEX, Document, tokenize_record


def build_rows(
    records: list[dict], fmt: str, tokenizer: Any, dataset: api.DatasetSpec
) -> tuple[list[dict], dict]:
    """Tokenised rows of at most dataset.maxSeqLength tokens, and their statistics."""
    limit = dataset.max_seq_length
    policy = dataset.cleaning.overlength
    overlength = {"truncated": 0, "dropped": 0, "chunked": 0}
    documents: list[Document] = []
    for record in records:
        document = tokenize_record(
            record,
            fmt,
            tokenizer,
            chat_template=dataset.chat_template,
            train_on_prompt=dataset.train_on_prompt,
        )
        pieces = [document]
        if len(document.input_ids) > limit:
            overlength[
                {"truncate": "truncated", "drop": "dropped", "chunk": "chunked"}[policy]
            ] += 1
            pieces = [] if policy == "drop" else _cut(document, limit, policy == "chunk")
        documents += [_mask_first(p) for p in pieces if p.loss_tokens > 0]
    rows = _pack(documents, limit) if dataset.packing else [_row([d]) for d in documents]
    return rows, _stats(rows, documents, overlength, limit)


def _cut(document: Document, limit: int, chunk: bool) -> list[Document]:
    ends = range(0, len(document.input_ids), limit) if chunk else [0]
    return [
        Document(document.input_ids[i : i + limit], document.labels[i : i + limit]) for i in ends
    ]


def _mask_first(document: Document) -> Document:
    return Document(document.input_ids, [IGNORE_INDEX, *document.labels[1:]])


def _pack(documents: list[Document], limit: int) -> list[dict]:
    """First-fit decreasing: longest documents first, each into the first row with room."""
    order = sorted(range(len(documents)), key=lambda i: (-len(documents[i].input_ids), i))
    bins: list[list[Document]] = []
    room: list[int] = []
    for index in order:
        document = documents[index]
        size = len(document.input_ids)
        target = next((b for b, free in enumerate(room) if free >= size), None)
        if target is None:
            bins.append([])
            room.append(limit)
            target = len(bins) - 1
        bins[target].append(document)
        room[target] -= size
    return [_row(documents_in_row) for documents_in_row in bins]


def _row(documents: list[Document]) -> dict:
    row: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for document in documents:
        row["input_ids"] += document.input_ids
        row["labels"] += document.labels
        row["position_ids"] += list(range(len(document.input_ids)))
    return row


def _stats(rows: list[dict], documents: list[Document], overlength: dict[str, int],
           limit: int) -> dict:  # fmt: skip
    tokens = sum(len(r["input_ids"]) for r in rows)
    # Share of the rows' maxSeqLength slots left empty: what fixed-length batches would
    # spend on padding. Dynamic padding to the longest row of a batch wastes less.
    capacity = limit * len(rows)
    return {
        "tokens": tokens,
        "loss_tokens": sum(d.loss_tokens for d in documents),
        "padding_ratio": round(1 - tokens / capacity, 4) if capacity else 0.0,
        "overlength": overlength,
        "rows": len(rows),
        "documents": len(documents),
    }
