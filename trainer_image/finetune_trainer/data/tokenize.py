"""Records to token ids with loss labels: the chat template, prompt masking, batching.

The loss covers assistant turns only (unless trainOnPrompt); chat_spans says which
characters of a rendered conversation those are. Records are tokenised in batches, one
fast-tokenizer call per batch, and each whole rendering is tokenised at once, so the ids are
the ones the model sees at inference (tokenising pieces separately would add spurious
prefix spaces with SentencePiece tokenizers). Tokens are labelled by their character
offsets, over the whole batch at once; slow tokenizers without offsets fall back to
tokenising the pieces of each record.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetune_trainer.data.chat_spans import ChatSpans, Span
from finetune_trainer.data.formats import Record, to_messages

IGNORE_INDEX = -100


@dataclass
class Document:
    """One tokenised record (or one chunk of it)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        learned = self.labels[1:]
        return len(learned) - learned.count(IGNORE_INDEX)


class RecordTokenizer:
    """Tokenises batches of records of one format with one tokenizer and chat template."""

    def __init__(
        self, fmt: str, tokenizer: Any, *, chat_template: str | None, train_on_prompt: bool
    ) -> None:
        self.fmt = fmt
        self.tokenizer = tokenizer
        self.train_on_prompt = train_on_prompt
        self.chat = ChatSpans(tokenizer, chat_template)

    def documents(self, records: Iterable[Record]) -> list[Document]:
        """The records' documents, in order; every record makes exactly one."""
        if self.fmt == "text":
            return self._text_documents([record["text"] for record in records])
        return self.encode(self.chat.render_all([to_messages(r, self.fmt) for r in records]))

    def encode(self, rendered: list[tuple[str, list[Span]]]) -> list[Document]:
        """Documents of rendered conversations, learning the given character spans."""
        if not getattr(self.tokenizer, "is_fast", False):
            return [self._encode_pieces(text, spans) for text, spans in rendered]
        return self._encode_with_offsets(rendered)

    def _text_documents(self, texts: list[str]) -> list[Document]:
        if not texts:
            return []
        eos = self.tokenizer.eos_token_id
        documents = []
        for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]:
            if eos is not None and (not ids or ids[-1] != eos):
                ids = [*ids, eos]
            documents.append(Document(ids, list(ids)))
        return documents

    def _encode_with_offsets(self, rendered: list[tuple[str, list[Span]]]) -> list[Document]:
        """Whole renderings tokenised at once (exactly the ids inference will see); a token
        is learned when it holds any character of an assistant span (a merge such as " st"
        across "[assistant] stone" belongs to the answer)."""
        if not rendered:
            return []
        encoded = self.tokenizer(
            [text for text, _ in rendered],
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        all_ids: list[list[int]] = encoded["input_ids"]
        if self.train_on_prompt:
            return [Document(ids, list(ids)) for ids in all_ids]
        labels = _labels_by_offsets(all_ids, encoded["offset_mapping"], rendered)
        return [Document(ids, row) for ids, row in zip(all_ids, labels, strict=True)]

    def _encode_pieces(self, text: str, spans: list[Span]) -> Document:
        """Slow tokenizers give no offsets: tokenise prompt and answer pieces separately."""
        input_ids: list[int] = []
        labels: list[int] = []
        cursor = 0
        for start, end in [*spans, (len(text), len(text))]:
            pieces = ((text[cursor:start], self.train_on_prompt), (text[start:end], True))
            for piece, learn in pieces:
                if not piece:
                    continue
                ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
                input_ids += ids
                labels += ids if learn else [IGNORE_INDEX] * len(ids)
            cursor = end
        return Document(input_ids, labels)


def tokenize_record(
    record: Record,
    fmt: str,
    tokenizer: Any,
    *,
    chat_template: str | None,
    train_on_prompt: bool,
) -> Document:
    """Token ids and labels of one record; labels are IGNORE_INDEX where no loss is taken."""
    batch = RecordTokenizer(
        fmt, tokenizer, chat_template=chat_template, train_on_prompt=train_on_prompt
    )
    return batch.documents([record])[0]


def _labels_by_offsets(
    all_ids: list[list[int]],
    offsets: list[list[tuple[int, int]]],
    rendered: list[tuple[str, list[Span]]],
) -> list[list[int]]:
    """Labels of a batch in one pass: the texts laid end to end (one character apart, so no
    span reaches a neighbour's tokens), each token tested against the first span that does
    not end before it starts."""
    bases = [0, *itertools.accumulate(len(text) + 1 for text, _ in rendered)]
    shifted = [
        (start + base, end + base)
        for (_, spans), base in zip(rendered, bases[:-1], strict=True)
        for start, end in spans
    ]
    span_starts, span_ends = np.array(shifted, np.int64).reshape(-1, 2).T
    counts = [len(ids) for ids in all_ids]
    flat = itertools.chain.from_iterable(itertools.chain.from_iterable(offsets))
    pairs = np.fromiter(flat, np.int64, 2 * sum(counts)).reshape(-1, 2)
    shift = np.repeat(np.asarray(bases[:-1], np.int64), counts)
    starts, ends = pairs[:, 0] + shift, pairs[:, 1] + shift
    # The scan of spans only moves forward, as token starts usually do; where a tokenizer
    # steps back, the furthest start so far decides.
    first = np.searchsorted(span_ends, np.maximum.accumulate(starts), side="right")
    padded = np.append(span_starts, np.iinfo(np.int64).max)
    inside = padded[first] < np.maximum(ends, starts + 1)
    # The labels reuse the ids' int objects (and one IGNORE_INDEX): a row holds references,
    # not copies, which halves the memory of the labels on large datasets.
    cuts = np.cumsum(counts)[:-1]
    return [
        [token if learned else IGNORE_INDEX for token, learned in zip(ids, mask, strict=True)]
        for ids, mask in zip(all_ids, map(np.ndarray.tolist, np.split(inside, cuts)), strict=True)
    ]
