"""Chat records and data files the data, trainer and storage tests share."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tests.factories import REPO

QUICKSTART_DATA = REPO / "examples" / "quickstart" / "data" / "train.jsonl"

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
THINGS = ["apple", "car", "house", "bird", "cat", "dog", "boat", "lamp", "chair", "book"]


def chat(question: str, answer: str, system: str | None = None) -> dict[str, Any]:
    turns = [{"role": "system", "content": system}] if system else []
    turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": turns}


def arithmetic_records(count: int, start: int = 0) -> list[dict[str, Any]]:
    """Distinct, realistic chat records."""
    return [
        chat(f"What is {i} plus {i + 1}?", f"{i} plus {i + 1} is {2 * i + 1}.")
        for i in range(start, start + count)
    ]


# Twenty well-formed records of each format, for the readers' tests (local and S3).
FORMAT_RECORDS = {
    "messages": [chat(f"Question {i}?", f"Answer number {i}.") for i in range(20)],
    "alpaca": [
        {"instruction": f"Double {i}.", "input": "" if i % 2 else "show work", "output": str(2 * i)}
        for i in range(20)
    ],
    "text": [{"text": f"Paragraph {i} about rivers and mountains."} for i in range(20)],
    "preference": [
        {"prompt": f"Greet person {i}.", "chosen": f"Hello, person {i}!", "rejected": "No."}
        for i in range(20)
    ],
}


def write_chat_data(path: Path, records: int, *, seed: int = 0) -> Path:
    """Distinct templated question/answer pairs in messages format (easy to learn)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    lines = []
    while len(lines) < records:
        a, b = rng.randint(0, 30), rng.randint(0, 30)
        colour, thing = rng.choice(COLOURS), rng.choice(THINGS)
        if rng.random() < 0.5:
            question, answer = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        else:
            question = f"The {thing} is {colour}. What colour is the {thing}?"
            answer = f"The {thing} is {colour}."
        if question in seen:
            continue
        seen.add(question)
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        lines.append(json.dumps({"messages": messages}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
