"""The four record shapes: checking them, and the views of a record other stages need.

A checked record keeps only the keys its format defines (extra keys are ignored, not
carried to the output), with every text field a string. A preference record is either
plain ({prompt, chosen, rejected} strings) or conversational, as TRL's preference data
sets are: chosen and rejected are lists of messages, with the shared turns in `prompt`
(a list, or a string for one user turn) or, without `prompt`, as the turns both lists
begin with; checked, it holds prompt, chosen and rejected as lists of messages.
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
    for key, value in record.items():
        if isinstance(value, list):  # messages, or a conversational preference's turns
            for index, message in enumerate(value):
                yield f"{key}[{index}].content", message["content"]
        else:
            yield f"'{key}'", value


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
    checked = _turns(messages, "messages")
    if not _answers(checked):
        raise MalformedRecord("no non-empty assistant message (nothing to learn)")
    return {"messages": checked}


def _turns(messages: list[Any], key: str) -> list[dict[str, str]]:
    """Checked {role, content} messages; reasons name them as key[index]."""
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise MalformedRecord(f"{key}[{index}] must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise MalformedRecord(
                f"{key}[{index}].role must be one of {ROLES}, got {describe(role)}"
            )
        content = _content(message.get("content"), index, key)
        checked.append({"role": role, "content": content})
    return checked


def _answers(messages: list[dict[str, str]]) -> bool:
    return any(m["role"] == "assistant" and m["content"].strip() for m in messages)


def _content(content: Any, index: int, key: str = "messages") -> str:
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
                raise MalformedRecord(f"{key}[{index}].content has a non-text part ({kind})")
            if not isinstance(part.get("text"), str):
                raise MalformedRecord(f"{key}[{index}].content text part has no string 'text'")
            texts.append(part["text"])
        return "\n".join(texts)
    raise MalformedRecord(f"{key}[{index}].content must be a string or a list of text parts")


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
    if isinstance(obj.get("chosen"), list) or isinstance(obj.get("rejected"), list):
        return _check_conversational_preference(obj)
    record = {key: _text_field(obj, key) for key in ("prompt", "chosen", "rejected")}
    if not record["chosen"].strip():
        raise MalformedRecord("'chosen' is empty (nothing to learn)")
    return record


def _check_conversational_preference(obj: dict[str, Any]) -> dict[str, Any]:
    answers = {}
    for key in ("chosen", "rejected"):
        value = obj.get(key)
        if not isinstance(value, list):
            what = "missing" if value is None else f"a {type(value).__name__}"
            raise MalformedRecord(
                f"'{key}' must be a list of messages like the other answer, got {what}"
            )
        answers[key] = _turns(value, key)
    prompt = obj.get("prompt")
    if prompt is None:
        # TRL's implicit prompt: the turns both conversations share.
        shared = 0
        chosen, rejected = answers["chosen"], answers["rejected"]
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        turns = chosen[:shared]
        answers = {"chosen": chosen[shared:], "rejected": rejected[shared:]}
    elif isinstance(prompt, str):
        turns = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        turns = _turns(prompt, "prompt")
    else:
        raise MalformedRecord(
            f"'prompt' must be a list of messages or a string, got {type(prompt).__name__}"
        )
    if not _answers(answers["chosen"]):
        raise MalformedRecord("'chosen' has no non-empty assistant message (nothing to learn)")
    if not any(m["role"] == "assistant" for m in answers["rejected"]):
        raise MalformedRecord("'rejected' has no assistant message (nothing to compare)")
    return {"prompt": turns, **answers}


def is_conversational(record: dict[str, Any]) -> bool:
    """A preference record whose prompt and answers are lists of messages."""
    return isinstance(record.get("chosen"), list)


def preference_conversations(
    record: dict[str, Any],
) -> tuple[list[dict[str, str]], list[dict[str, str]], int]:
    """The chosen and the rejected conversation of a preference record, and how many
    leading turns of each are the shared prompt (the loss covers only the rest)."""
    if is_conversational(record):
        prompt = record["prompt"]
        return [*prompt, *record["chosen"]], [*prompt, *record["rejected"]], len(prompt)
    user = {"role": "user", "content": record["prompt"]}
    chosen = [user, {"role": "assistant", "content": record["chosen"]}]
    return chosen, [user, {"role": "assistant", "content": record["rejected"]}], 1


CHECKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "messages": _check_messages,
    "alpaca": _check_alpaca,
    "text": _check_text,
    "preference": _check_preference,
}


def map_texts(record: dict[str, Any], fmt: str, fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of the record with fn applied to every text field; roles and turns unchanged."""
    return {
        key: [{**m, "content": fn(m["content"])} for m in value]
        if isinstance(value, list)
        else fn(value)
        for key, value in record.items()
    }


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
        return preference_conversations(record)[0]
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
    return "\n".join(f"{key}: {_as_text(record[key])}" for key in sorted(record))


def _as_text(value: str | list[dict[str, str]]) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(f"{m['role']}: {m['content']}" for m in value)


def prompt_text(record: dict[str, Any], fmt: str) -> str | None:
    """What the model is asked: turns before the last assistant turn, instruction or prompt."""
    if fmt == "text":
        return None
    messages = to_messages(record, fmt)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages[:last])


def visible_length(record: dict[str, Any], fmt: str) -> int:
    """Characters of actual content (roles and keys not counted)."""
    return sum(
        sum(len(m["content"].strip()) for m in value)
        if isinstance(value, list)
        else len(value.strip())
        for value in record.values()
    )
