"""Generate examples/quickstart/data/train.jsonl: small learnable tasks in messages format.

The tasks are templated (arithmetic, capitals, opposites, reversing and upper-casing
words, counting letters), so a tiny model trained for a couple of minutes on a CPU
visibly lowers its validation loss. A few exact duplicates, records with PII and
malformed lines are planted on purpose so `finetune prepare` has something to report.

    python examples/quickstart/make_data.py   # rewrites data/train.jsonl, deterministically
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "train.jsonl"
SEED = 7

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Peru": "Lima", "Norway": "Oslo", "Sweden": "Stockholm",
    "Poland": "Warsaw", "Greece": "Athens", "Austria": "Vienna", "Ireland": "Dublin",
    "Chile": "Santiago", "Cuba": "Havana", "India": "New Delhi", "China": "Beijing",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "open": "closed",
    "light": "dark", "happy": "sad", "early": "late", "full": "empty", "strong": "weak",
    "high": "low", "new": "old", "hard": "soft", "wet": "dry", "loud": "quiet",
    "rich": "poor", "long": "short", "thick": "thin", "near": "far", "first": "last",
}  # fmt: skip
WORDS = [
    "apple", "river", "stone", "cloud", "green", "table", "music", "house", "tiger",
    "bread", "chair", "plant", "light", "ocean", "train", "piano", "lemon", "horse",
    "paper", "sugar", "dream", "grape", "smile", "watch", "field", "storm", "candle",
]  # fmt: skip


def chat(question: str, answer: str) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def arithmetic() -> list[dict]:
    records = []
    for a in range(21):
        for b in range(21):
            records.append(chat(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            if a >= b:
                records.append(chat(f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."))
    return records


def capitals() -> list[dict]:
    questions = ("What is the capital of {}?", "Name the capital city of {}.")
    return [
        chat(q.format(country), f"The capital of {country} is {city}.")
        for country, city in CAPITALS.items()
        for q in questions
    ]


def opposites() -> list[dict]:
    pairs = [*OPPOSITES.items(), *((b, a) for a, b in OPPOSITES.items())]
    return [chat(f"What is the opposite of {a}?", f"The opposite of {a} is {b}.") for a, b in pairs]


def word_tasks() -> list[dict]:
    records = []
    for word in WORDS:
        records.append(chat(f"Reverse the word {word}.", f"{word} reversed is {word[::-1]}."))
        records.append(chat(f"Write {word} in capital letters.", word.upper()))
        records.append(chat(f"How many letters are in {word}?", f"{word} has {len(word)} letters."))
    return records


# Planted on purpose: the data report shows them redacted, deduplicated and counted.
PII_RECORDS = [
    chat(
        "Send the report to maria.lopez@example.com please.",
        "I will send the report to maria.lopez@example.com.",
    ),
    chat(
        "My phone number is +1 (555) 014-2367, call me back.",
        "I will call you back at +1 (555) 014-2367.",
    ),
    chat(
        "Pay with card 4111 1111 1111 1111 for the order.",
        "The order is paid with the card ending in 1111.",
    ),
    chat(
        "Email ops@example.org or call 555-013-9876 about the outage.",
        "I will contact ops@example.org about the outage.",
    ),
]
MALFORMED_LINES = [
    '{"messages": [{"role": "user", "content": "What is 2 plus 2?"}, {"role": "assistant"',
    '{"prompt": "What is the capital of Chile?", "answer": "Santiago"}',
    '{"messages": [{"role": "robot", "content": "beep"}, '
    '{"role": "assistant", "content": "boop"}]}',
    '{"messages": []}',
]


def build_lines(count: int = 600, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    small_tasks = capitals() + opposites() + word_tasks()
    records = small_tasks + rng.sample(arithmetic(), count - len(small_tasks))
    records += PII_RECORDS
    lines = [json.dumps(record) for record in records]
    lines += [lines[i] for i in (3, 10, 42, 99)]  # exact duplicates
    rng.shuffle(lines)
    for position, bad in zip((50, 200, 350, 500), MALFORMED_LINES, strict=True):
        lines.insert(position, bad)
    return lines


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = build_lines()
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {OUT}")


if __name__ == "__main__":
    main()
