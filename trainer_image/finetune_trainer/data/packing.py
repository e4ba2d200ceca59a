"""Rows for training: over-length policy per document, then optional packing.

A row is {"input_ids", "labels", "position_ids"}; position ids restart at 0 for each
packed document, which is how collate_rows knows where documents begin. The first
label of every document is masked: in a packed row it would otherwise be predicted from
the previous document's last token.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from finetune_operator import api

from finetune_trainer.data.formats import Record
from finetune_trainer.data.tokenize import IGNORE_INDEX, Document, RecordTokenizer
from finetune_trainer.errors import DataError

Row = dict[str, list[int]]  # input_ids, labels and position_ids of one training row
# Records tokenised per tokenizer call: enough to amortise the call, little to hold at once.
TOKENIZE_BATCH = 512


def build_rows(
    records: list[Record], fmt: str, tokenizer: Any, dataset: api.DatasetSpec
) -> tuple[list[Row], dict[str, Any]]:
    """Tokenised rows of at most dataset.maxSeqLength tokens, and their statistics."""
    overlength = new_overlength()
    documents = list(within_limit(records, fmt, tokenizer, dataset, overlength))
    return rows_of_documents(documents, dataset, overlength)


def rows_of_documents(
    documents: list[Document], dataset: api.DatasetSpec, overlength: dict[str, int]
) -> tuple[list[Row], dict[str, Any]]:
    """build_rows' second half, on documents already tokenised (here or on Ray)."""
    limit = dataset.max_seq_length
    if dataset.packing:
        layout = _pack_lengths([len(d.input_ids) for d in documents], limit)
    else:
        layout = [[i] for i in range(len(documents))]
    rows = [_row([documents[i] for i in row]) for row in layout]
    lengths = [len(d.input_ids) for d in documents]
    losses = [d.loss_tokens for d in documents]
    return rows, _stats(layout, lengths, losses, overlength, limit)


def token_stats(
    records: Iterable[Record], fmt: str, tokenizer: Any, dataset: api.DatasetSpec
) -> dict[str, Any]:
    """The statistics of build_rows, keeping two integers per document instead of rows."""
    overlength = new_overlength()
    lengths, losses = [], []
    for document in within_limit(records, fmt, tokenizer, dataset, overlength):
        lengths.append(len(document.input_ids))
        losses.append(document.loss_tokens)
    limit = dataset.max_seq_length
    layout = (
        _pack_lengths(lengths, limit) if dataset.packing else [[i] for i in range(len(lengths))]
    )
    return _stats(layout, lengths, losses, overlength, limit)


def new_overlength() -> dict[str, int]:
    """The over-length counts of the data report, all zero."""
    return {"truncated": 0, "dropped": 0, "chunked": 0}


def within_limit(
    records: Iterable[Record],
    fmt: str,
    tokenizer: Any,
    dataset: api.DatasetSpec,
    overlength: dict[str, int],
) -> Iterator[Document]:
    """Tokenised documents within maxSeqLength, the over-length policy applied and counted."""
    limit = dataset.max_seq_length
    policy = dataset.cleaning.overlength
    check_template(fmt, tokenizer, dataset)
    tokenizing = RecordTokenizer(
        fmt, tokenizer, chat_template=dataset.chat_template, train_on_prompt=dataset.train_on_prompt
    )
    for document in itertools.chain.from_iterable(
        map(tokenizing.documents, _batches(records, TOKENIZE_BATCH))
    ):
        if len(document.input_ids) <= limit:
            yield _mask_first(document)
            continue
        pieces = [] if policy == "drop" else _cut(document, limit, policy == "chunk")
        pieces = [p for p in pieces if p.loss_tokens > 0]
        # A truncation that cut off the whole answer leaves nothing to learn: dropped.
        action = {"truncate": "truncated", "drop": "dropped", "chunk": "chunked"}[policy]
        overlength[action if pieces else "dropped"] += 1
        for piece in pieces:
            yield _mask_first(piece)


def _batches(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def check_template(fmt: str, tokenizer: Any, dataset: api.DatasetSpec) -> None:
    if (
        fmt != "text"
        and not dataset.chat_template
        and not getattr(tokenizer, "chat_template", None)
    ):
        raise DataError(
            f"spec.dataset.chatTemplate: the tokenizer has no chat template, which {fmt} "
            "records need; set spec.dataset.chatTemplate to a Jinja chat template"
        )


def _cut(document: Document, limit: int, chunk: bool) -> list[Document]:
    ends = range(0, len(document.input_ids), limit) if chunk else [0]
    return [
        Document(document.input_ids[i : i + limit], document.labels[i : i + limit]) for i in ends
    ]


def _mask_first(document: Document) -> Document:
    return Document(document.input_ids, [IGNORE_INDEX, *document.labels[1:]])


def _pack_lengths(lengths: list[int], limit: int) -> list[list[int]]:
    """Best-fit decreasing: longest documents first, each into the fullest row it fits.

    Rows are kept in buckets by free room, with the distinct room values in a sorted list,
    so placing a document costs a bisection instead of a scan over every row.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    by_room: dict[int, list[int]] = {}
    rooms: list[int] = []
    for index in order:
        size = lengths[index]
        position = bisect.bisect_left(rooms, size)
        if position < len(rooms):
            room = rooms[position]
            row = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(position)
        else:
            room, row = limit, len(rows)
            rows.append([])
        rows[row].append(index)
        left = room - size
        if left > 0:
            if left not in by_room:
                bisect.insort(rooms, left)
                by_room[left] = []
            by_room[left].append(row)
    return rows


def _row(documents: list[Document]) -> Row:
    row: Row = {"input_ids": [], "labels": [], "position_ids": []}
    for document in documents:
        row["input_ids"] += document.input_ids
        row["labels"] += document.labels
        row["position_ids"] += list(range(len(document.input_ids)))
    return row


def _stats(
    layout: list[list[int]],
    lengths: list[int],
    losses: list[int],
    overlength: dict[str, int],
    limit: int,
) -> dict[str, Any]:
    tokens = sum(lengths)
    # Share of the rows' maxSeqLength slots left empty: what fixed-length batches would
    # spend on padding. Dynamic padding to the longest row of a batch wastes less.
    capacity = limit * len(layout)
    return {
        "tokens": tokens,
        "loss_tokens": sum(losses),
        "padding_ratio": round(1 - tokens / capacity, 4) if capacity else 0.0,
        "overlength": overlength,
        "rows": len(layout),
        "documents": len(lengths),
    }
