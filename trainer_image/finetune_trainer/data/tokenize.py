"""Records to token ids with loss labels: the chat template, prompt masking, over-length.

The loss covers assistant turns only (unless trainOnPrompt). This works with any chat
template, including ones without `{% generation %}` markers: the conversation is
rendered once per assistant turn, with and without that turn, and the characters in
between are the turn's own (its content and end-of-turn marker). The full rendering is
tokenised once and tokens are labelled by their character offsets, so the ids are the
ones the model sees at inference (tokenising pieces separately would add spurious
prefix spaces with SentencePiece tokenizers); slow tokenizers without offsets fall back
to tokenising the pieces. When a template does not render prefixes as prefixes (some
rewrite earlier turns), the assistant contents are located in the full rendering
instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_trainer.data.formats import to_messages
from finetune_trainer.errors import DataError

IGNORE_INDEX = -100


@dataclass
class Document:
    """One tokenised record (or one chunk of it)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def loss_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels[1:])


def tokenize_record(
    record: dict[str, Any],
    fmt: str,
    tokenizer: Any,
    *,
    chat_template: str | None,
    train_on_prompt: bool,
) -> Document:
    """Token ids and labels of one record; labels are IGNORE_INDEX where no loss is taken."""
    if fmt == "text":
        ids = tokenizer(record["text"], add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = [*ids, tokenizer.eos_token_id]
        return Document(ids, list(ids))
    messages = to_messages(record, fmt)
    text, spans = _render_with_spans(messages, tokenizer, chat_template)
    if getattr(tokenizer, "is_fast", False):
        return _encode_with_offsets(text, spans, tokenizer, train_on_prompt)
    return _encode_pieces(text, spans, tokenizer, train_on_prompt)


def _encode_with_offsets(
    text: str, spans: list[tuple[int, int]], tokenizer: Any, train_on_prompt: bool
) -> Document:
    """The whole rendering tokenised at once (exactly the ids inference will see); a token
    is learned when it holds any character of an assistant span (a merge such as " st"
    across "[assistant] stone" belongs to the answer)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    span = 0
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        while span < len(spans) and spans[span][1] <= start:
            span += 1
        inside = span < len(spans) and spans[span][0] < max(end, start + 1)
        labels.append(token if inside or train_on_prompt else IGNORE_INDEX)
    return Document(list(encoded["input_ids"]), labels)


def _encode_pieces(
    text: str, spans: list[tuple[int, int]], tokenizer: Any, train_on_prompt: bool
) -> Document:
    """Slow tokenizers give no offsets: tokenise prompt and answer pieces separately."""
    input_ids: list[int] = []
    labels: list[int] = []
    cursor = 0
    for start, end in [*spans, (len(text), len(text))]:
        for piece, learn in ((text[cursor:start], train_on_prompt), (text[start:end], True)):
            if not piece:
                continue
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
            input_ids += ids
            labels += ids if learn else [IGNORE_INDEX] * len(ids)
        cursor = end
    return Document(input_ids, labels)


def _render(
    messages: list[dict[str, str]], tokenizer: Any, template: str | None, generation_prompt: bool
) -> str:
    from jinja2 import TemplateError

    try:
        text: str = tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=generation_prompt,
            chat_template=template,
        )
        return text
    except TemplateError as error:
        # Templates raise on conversations they do not support (e.g. no system role).
        roles = "/".join(m["role"] for m in messages)
        raise DataError(f"chat template failed on a conversation ({roles}): {error}") from None


def _render_with_spans(
    messages: list[dict[str, str]], tokenizer: Any, template: str | None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(messages, tokenizer, template, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(messages[:index], tokenizer, template, True) if index else ""
        through = _render(messages[: index + 1], tokenizer, template, False)
        if not (full.startswith(through) and through.startswith(before)):
            return full, _find_contents(full, messages)
        spans.append((len(before), len(through)))
    return full, spans


def _find_contents(full: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Fallback spans: each assistant content located in order in the rendered text."""
    spans, cursor = [], 0
    for message in messages:
        content = message["content"]
        position = full.find(content, cursor) if content else -1
        if position < 0:
            continue
        if message["role"] == "assistant":
            spans.append((position, position + len(content)))
        cursor = position + len(content)
    return spans
