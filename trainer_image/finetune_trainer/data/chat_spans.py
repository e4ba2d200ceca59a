"""A conversation rendered with its chat template, and the character spans of its assistant turns.

The loss covers the characters a model must produce for an assistant turn: from the end of
the generation prompt that precedes it to the end of the conversation rendered through it
(its content and end-of-turn marker). The definition works with any template, with or
without `{% generation %}` markers, and is measured by rendering prefixes of the
conversation: with the generation prompt before each assistant turn, and through it.
When a template does not render prefixes as prefixes (some rewrite earlier turns), the
assistant contents are located in the full rendering instead.

Measuring that for every record costs 1 + 2 x (assistant turns) renders. `ChatSpans`
measures it once per sequence of roles instead, on a probe conversation whose contents are
placeholders, and keeps where each span starts and ends relative to the contents. A record
is then rendered once: when that rendering is exactly the probe's template text with the
record's contents in place of the placeholders, the spans follow from the content lengths.
That equals the per-prefix result provided the template also inserts contents verbatim in
the prefixes, which only the full rendering is checked for. Templates that touch contents
(trim them, drop reasoning from earlier turns) do so visibly: the record fails the check
and is measured the per-prefix way. So is every record of a role sequence whose probe
falls back to locating contents, or on which the template raises.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from finetune_trainer.errors import DataError

Span = tuple[int, int]  # [start, end) character offsets in the rendered text
# A position in a rendering counted from a content: (contents before it, characters after
# the last of them). It stays valid when contents change length.
Anchor = tuple[int, int]

# Private-use characters: no template writes them, and trim or strip leaves them alone.
_PLACEHOLDER = "\ue000{}\ue001"
# Role sequences remembered per ChatSpans; datasets have a few dozen at most.
_MAX_LAYOUTS = 4096


@dataclass(frozen=True)
class Layout:
    """How a template renders conversations of one role sequence, contents aside."""

    texts: tuple[str, ...]  # the template's text before, between and after the contents
    spans: tuple[tuple[Anchor, Anchor], ...]  # the assistant spans, anchored to contents

    def spans_in(self, rendered: str, contents: list[str]) -> list[Span] | None:
        """The spans in `rendered`, or None when it is not this layout around `contents`."""
        pieces = [
            *itertools.chain.from_iterable(zip(self.texts[:-1], contents, strict=True)),
            self.texts[-1],
        ]
        if "".join(pieces) != rendered:
            return None
        # text_starts[k]: where the template text after the k-th content begins.
        text_starts = [*itertools.accumulate(map(len, pieces))][1::2]
        text_starts.insert(0, 0)
        return [(text_starts[a] + da, text_starts[b] + db) for (a, da), (b, db) in self.spans]


class ChatSpans:
    """Renders conversations once each; remembers each role sequence's layout."""

    def __init__(self, tokenizer: Any, template: str | None) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self._layouts: dict[tuple[str, ...], Layout | None] = {}

    def render_all(self, conversations: list[list[dict[str, str]]]) -> list[tuple[str, list[Span]]]:
        """Each conversation rendered, with the character spans of its assistant turns."""
        from jinja2 import TemplateError

        if not conversations:
            return []
        try:
            # One call for the batch: the per-call work of apply_chat_template is shared.
            fulls: list[str] = self.tokenizer.apply_chat_template(
                conversations, tokenize=False, chat_template=self.template
            )
        except TemplateError:
            # One at a time instead, so that the first conversation to fail is the one named.
            return [self.render(messages) for messages in conversations]
        return list(map(self._with_spans, conversations, fulls))

    def render(self, messages: list[dict[str, str]]) -> tuple[str, list[Span]]:
        """The rendered conversation and the character spans of its assistant turns."""
        return self._with_spans(messages, self._render(messages, False))

    def _with_spans(self, messages: list[dict[str, str]], full: str) -> tuple[str, list[Span]]:
        roles = tuple(message["role"] for message in messages)
        if roles not in self._layouts:
            if len(self._layouts) >= _MAX_LAYOUTS:
                self._layouts.clear()
            self._layouts[roles] = self._probe(roles)
        layout = self._layouts[roles]
        spans = layout.spans_in(full, [m["content"] for m in messages]) if layout else None
        if spans is None:
            spans = self._spans_by_prefixes(messages, full)
        if spans is None:  # prefixes are not prefixes: find the contents instead
            spans = find_contents(full, messages)
        return full, spans

    def _probe(self, roles: tuple[str, ...]) -> Layout | None:
        """The layout of `roles`, measured on placeholder contents; None when the template
        rejects them, or the spans had to be found by content."""
        messages = [{"role": r, "content": _PLACEHOLDER.format(k)} for k, r in enumerate(roles)]
        try:
            full = self._render(messages, False)
            spans = self._spans_by_prefixes(messages, full)
        except DataError:
            return None
        return None if spans is None else _layout(full, [m["content"] for m in messages], spans)

    def _spans_by_prefixes(self, messages: list[dict[str, str]], full: str) -> list[Span] | None:
        """The spans measured by rendering prefixes; None when prefixes are not prefixes."""
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self._render(messages[:index], True) if index else ""
            through = self._render(messages[: index + 1], False)
            if not (full.startswith(through) and through.startswith(before)):
                return None
            spans.append((len(before), len(through)))
        return spans

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        from jinja2 import TemplateError

        try:
            text: str = self.tokenizer.apply_chat_template(
                messages,
                tokenize=False,
                add_generation_prompt=generation_prompt,
                chat_template=self.template,
            )
            return text
        except TemplateError as error:
            # Templates raise on conversations they do not support (e.g. no system role).
            roles = "/".join(m["role"] for m in messages)
            raise DataError(f"chat template failed on a conversation ({roles}): {error}") from None


def find_contents(full: str, messages: list[dict[str, str]]) -> list[Span]:
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


def _layout(full: str, placeholders: list[str], spans: list[Span]) -> Layout | None:
    """The template text around the placeholders, and the spans anchored to them; None
    when a placeholder is not there exactly once or a span edge falls inside one."""
    texts: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for placeholder in placeholders:
        start = full.find(placeholder, ends[-1] if ends else 0)
        if start < 0 or placeholder in full[start + 1 :]:
            return None
        texts.append(full[ends[-1] if ends else 0 : start])
        starts.append(start)
        ends.append(start + len(placeholder))
    texts.append(full[ends[-1] if ends else 0 :])
    anchored = []
    for start, end in spans:
        first, last = _anchor(start, starts, ends), _anchor(end, starts, ends)
        if first is None or last is None:
            return None
        anchored.append((first, last))
    return Layout(tuple(texts), tuple(anchored))


def _anchor(position: int, starts: list[int], ends: list[int]) -> Anchor | None:
    """`position` as (contents before it, offset after the last); None inside a content."""
    before = sum(end <= position for end in ends)
    if before < len(starts) and starts[before] < position:
        return None
    return before, position - (ends[before - 1] if before else 0)
