"""The four record shapes: checking them, and the views of a record other stages need.

A checked record keeps only the keys its format defines (extra keys are ignored, not
carried to the output), with every text field a string.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from finetune_trainer.data import pii_patterns

FORMATS = ("messages", "alpaca", "text", "preference")
ROLES = ("system", "user", "assistant", "tool")
CHAT_FORMATS = ("messages", "alpaca", "preference")
Record = dict[str, Any]  # a checked record: its format's keys only, text fields strings
# Reasons go to the console and data_report.json, so they quote at most this much of a value.
EXCERPT_CHARS = 40
_SURROGATE = re.compile("[\ud800-\udfff]")


class MalformedRecord(ValueError):
    """A record that does not have its format's shape; the message says what is wrong."""


def check_record(obj: Any, fmt: str) -> dict[str, Any]:
    """The record reduced to its format's fields, or MalformedRecord naming the problem."""
    if not isinstance(obj, dict):
        raise MalformedRecord(f"expected a JSON object, got {type(obj).__name__}")
    record = CHECKERS[fmt](obj)
    for name, text in _text_fields(record, fmt):
        # json.loads lets a lone "\ud800" escape through; it cannot be written as UTF-8.
        if _SURROGATE.search(text):
            raise MalformedRecord(f"{name} holds a lone surrogate escape (not Unicode text)")
    return record


def _text_fields(record: dict[str, Any], fmt: str) -> Iterator[tuple[str, str]]:
    if fmt == "messages":
        for index, message in enumerate(record["messages"]):
            yield f"messages[{index}].content", message["content"]
    else:
        yield from ((f"'{key}'", value) for key, value in record.items())


def describe(value: Any, *, quote: bool = True) -> str:
    """A bad value for a reason: its type, or for text its length and a short excerpt with
    PII redacted; never the value itself (it may be a secret or a 200 KB blob)."""
    if not isinstance(value, str):
        return type(value).__name__
    # Redact a window wider than the excerpt, so that no email or key is cut in two first.
    # repr escapes what cannot be printed (control characters, lone surrogates).
    excerpt = repr(pii_patterns.redact(value[: EXCERPT_CHARS * 5])[:EXCERPT_CHARS])[1:-1]
    more = f"... ({len(value)} characters)" if len(value) > EXCERPT_CHARS else ""
    return f"'{excerpt}'{more}" if quote else f"{excerpt}{more}"


def _text_field(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise MalformedRecord(f"missing key '{key}'")
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise MalformedRecord(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _check_messages(obj: dict[str, Any]) -> dict[str, Any]:
    messages = obj.get("messages")
    if messages is None:
        raise MalformedRecord("missing key 'messages'")
    if not isinstance(messages, list):
        raise MalformedRecord(f"'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise MalformedRecord("'messages' is empty")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise MalformedRecord(f"messages[{index}] must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise MalformedRecord(
                f"messages[{index}].role must be one of {ROLES}, got {describe(role)}"
            )
        checked.append({"role": role, "content": _content(message.get("content"), index)})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in checked):
        raise MalformedRecord("no non-empty assistant message (nothing to learn)")
    return {"messages": checked}


def _content(content: Any, index: int) -> str:
    """A message's text; OpenAI-style lists of text parts are joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = (
                    describe(part.get("type"), quote=False)
                    if isinstance(part, dict)
                    else type(part).__name__
                )
                raise MalformedRecord(f"messages[{index}].content has a non-text part ({kind})")
            if not isinstance(part.get("text"), str):
                raise MalformedRecord(f"messages[{index}].content text part has no string 'text'")
            texts.append(part["text"])
        return "\n".join(texts)
    raise MalformedRecord(f"messages[{index}].content must be a string or a list of text parts")


def _check_alpaca(obj: dict[str, Any]) -> dict[str, Any]:
    record = {
        "instruction": _text_field(obj, "instruction"),
        "input": _text_field(obj, "input", required=False),
        "output": _text_field(obj, "output"),
    }
    if not record["output"].strip():
        raise MalformedRecord("'output' is empty (nothing to learn)")
    return record


def _check_text(obj: dict[str, Any]) -> dict[str, Any]:
    return {"text": _text_field(obj, "text")}


def _check_preference(obj: dict[str, Any]) -> dict[str, Any]:
    record = {key: _text_field(obj, key) for key in ("prompt", "chosen", "rejected")}
    if not record["chosen"].strip():
        raise MalformedRecord("'chosen' is empty (nothing to learn)")
    return record


CHECKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "messages": _check_messages,
    "alpaca": _check_alpaca,
    "text": _check_text,
    "preference": _check_preference,
}


def map_texts(record: dict[str, Any], fmt: str, fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of the record with fn applied to every text field; roles and turns unchanged."""
    if fmt == "messages":
        return {"messages": [{**m, "content": fn(m["content"])} for m in record["messages"]]}
    return {key: fn(value) for key, value in record.items()}


def to_messages(record: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    """Chat turns of a chat-like record (alpaca and preference become user/assistant)."""
    if fmt == "messages":
        messages: list[dict[str, str]] = record["messages"]
        return messages
    if fmt == "alpaca":
        prompt = record["instruction"]
        if record["input"].strip():
            prompt = f"{prompt}\n\n{record['input']}"
        return [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": record["output"]},
        ]
    if fmt == "preference":
        return [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["chosen"]},
        ]
    raise ValueError(f"format {fmt} has no chat turns")


def convert(record: dict[str, Any], source_fmt: str, target_fmt: str) -> dict[str, Any]:
    """A record in another format where that loses nothing the trainer uses."""
    if source_fmt == target_fmt:
        return record
    if target_fmt == "messages" and source_fmt in CHAT_FORMATS:
        return {"messages": to_messages(record, source_fmt)}
    raise ValueError(f"cannot use {source_fmt} records where {target_fmt} records are expected")


def can_convert(source_fmt: str, target_fmt: str) -> bool:
    return source_fmt == target_fmt or (target_fmt == "messages" and source_fmt in CHAT_FORMATS)


def content_text(record: dict[str, Any], fmt: str) -> str:
    """Everything a record says, as one string (for length checks and content hashes)."""
    if fmt == "messages":
        return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])
    return "\n".join(f"{key}: {record[key]}" for key in sorted(record))


def prompt_text(record: dict[str, Any], fmt: str) -> str | None:
    """What the model is asked: turns before the last assistant turn, instruction or prompt."""
    if fmt == "text":
        return None
    messages = to_messages(record, fmt)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages[:last])


def visible_length(record: dict[str, Any], fmt: str) -> int:
    """Characters of actual content (roles and keys not counted)."""
    if fmt == "messages":
        return sum(len(m["content"].strip()) for m in record["messages"])
    return sum(len(value.strip()) for value in record.values())
