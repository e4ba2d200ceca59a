"""Preference pairs as training rows for DPO: the chosen and the rejected conversation.

A pair makes one row: the chosen conversation, then the rejected one, each its own
document (position ids restart at 0, so packed attention keeps them apart), so the pairs
of a batch stay whole whatever the micro batch. Both are rendered with the chat template
like any conversation; the labels cover only the answer (the turns after the shared
prompt), whatever trainOnPrompt says, since DPO compares the answers' log-probabilities.

Over maxSeqLength (each conversation on its own): `truncate` keeps each one's start, and
a pair whose chosen or rejected answer is cut away entirely is dropped; `drop` drops the
pair. (`chunk` cannot apply: the API refuses it with objective dpo.) Pairs are never
packed with other pairs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from finetune_operator import api

from finetune_trainer.data.chat_spans import Span
from finetune_trainer.data.formats import Record, preference_conversations
from finetune_trainer.data.packing import TOKENIZE_BATCH, Row, check_template, new_overlength
from finetune_trainer.data.tokenize import IGNORE_INDEX, Document, RecordTokenizer


def build_pairs(
    records: list[Record], tokenizer: Any, dataset: api.DatasetSpec
) -> tuple[list[Row], dict[str, Any]]:
    """One row per preference pair, and the statistics build_rows reports."""
    overlength = new_overlength()
    kept = kept_pairs(records, tokenizer, dataset, overlength)
    return rows_of_pairs(kept, dataset, overlength)


def kept_pairs(
    records: Iterable[Record],
    tokenizer: Any,
    dataset: api.DatasetSpec,
    overlength: dict[str, int],
) -> Iterator[tuple[Document, Document]]:
    """The (chosen, rejected) documents of each record the over-length policy keeps."""
    check_template("preference", tokenizer, dataset)
    tokenizing = RecordTokenizer(
        "messages", tokenizer, chat_template=dataset.chat_template, train_on_prompt=False
    )
    limit, policy = dataset.max_seq_length, dataset.cleaning.overlength
    for chosen, rejected in _pairs(records, tokenizing):
        if max(len(chosen.input_ids), len(rejected.input_ids)) > limit:
            chosen, rejected = _truncated(chosen, limit), _truncated(rejected, limit)
            keep = policy != "drop" and chosen.loss_tokens > 0 and rejected.loss_tokens > 0
            overlength["truncated" if keep else "dropped"] += 1
            if not keep:
                continue
        yield chosen, rejected


def rows_of_pairs(
    pairs: Iterable[tuple[Document, Document]],
    dataset: api.DatasetSpec,
    overlength: dict[str, int],
) -> tuple[list[Row], dict[str, Any]]:
    """build_pairs' second half, on pairs already tokenised (here or on Ray)."""
    rows = [pair_row(chosen, rejected) for chosen, rejected in pairs]
    tokens = sum(len(row["input_ids"]) for row in rows)
    capacity = 2 * dataset.max_seq_length * len(rows)
    return rows, {
        "tokens": tokens,
        "loss_tokens": sum(len(row["labels"]) - row["labels"].count(IGNORE_INDEX) for row in rows),
        "padding_ratio": round(1 - tokens / capacity, 4) if capacity else 0.0,
        "overlength": overlength,
        "rows": len(rows),
        "documents": 2 * len(rows),
        "pairs": len(rows),
    }


def pair_row(chosen: Document, rejected: Document) -> Row:
    """The chosen document then the rejected one; each one's first token carries no loss."""
    documents = [chosen, rejected]
    return {
        "input_ids": [t for d in documents for t in d.input_ids],
        "labels": [t for d in documents for t in [IGNORE_INDEX, *d.labels[1:]]],
        "position_ids": [i for d in documents for i in range(len(d.input_ids))],
    }


def _pairs(
    records: Iterable[Record], tokenizing: RecordTokenizer
) -> Iterator[tuple[Document, Document]]:
    """(chosen, rejected) documents of each record, a batch of records per tokenizer call."""
    iterator = iter(records)
    while batch := list(itertools.islice(iterator, TOKENIZE_BATCH)):
        conversations, prompt_turns = [], []
        for record in batch:
            chosen, rejected, shared = preference_conversations(record)
            conversations += [chosen, rejected]
            prompt_turns += [chosen[:shared], rejected[:shared]]
        rendered = tokenizing.chat.render_all(conversations)
        answers_only = [
            (text, _answer_spans(spans, conversation, prompt))
            for (text, spans), conversation, prompt in zip(
                rendered, conversations, prompt_turns, strict=True
            )
        ]
        documents = tokenizing.encode(answers_only)
        yield from zip(documents[0::2], documents[1::2], strict=True)


def _answer_spans(
    spans: list[Span], conversation: list[dict[str, str]], prompt: list[dict[str, str]]
) -> list[Span]:
    """The spans of the answer's assistant turns: a prompt's own assistant turns (earlier
    in a multi-turn conversation) are context, not what is compared."""
    answer_turns = sum(m["role"] == "assistant" for m in conversation[len(prompt) :])
    return spans[len(spans) - min(answer_turns, len(spans)) :]


def _truncated(document: Document, limit: int) -> Document:
    return Document(document.input_ids[:limit], document.labels[:limit])
