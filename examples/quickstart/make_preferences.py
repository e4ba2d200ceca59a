"""Generate examples/quickstart/data/preferences.jsonl: preference pairs for examples/dpo.yaml.

Each pair asks a quickstart question (arithmetic, capitals, opposites); the chosen answer
is right, the rejected one wrong or evasive, so DPO on the quickstart model (which has
never seen these tasks) visibly learns to prefer answering, and in part answering right.
Most records are conversational (TRL's form: `prompt`, `chosen` and `rejected` as lists of
messages), some plain strings, some with the prompt left implicit (shared turns of chosen
and rejected); two malformed lines are planted on purpose so the data report has
something to count.

    python examples/quickstart/make_preferences.py   # rewrites the file, deterministically
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).parent / "data" / "preferences.jsonl"
SEED = 11
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa",
    "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens", "Ireland": "Dublin",
}  # fmt: skip
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "open": "closed",
             "light": "dark", "happy": "sad", "early": "late", "full": "empty"}  # fmt: skip


def question_and_answers(rng: random.Random) -> tuple[str, str, str]:
    """A question, its right answer and a plausible wrong one."""
    kind = rng.choice(["plus", "minus", "capital", "opposite"])
    if kind in ("plus", "minus"):
        a, b = rng.randint(2, 20), rng.randint(2, 20)
        right = a + b if kind == "plus" else a - b
        wrong = right + rng.choice([-3, -2, -1, 1, 2, 3])
        return (
            f"What is {a} {kind} {b}?",
            f"{a} {kind} {b} is {right}.",
            f"{a} {kind} {b} is {wrong}.",
        )
    table = CAPITALS if kind == "capital" else OPPOSITES
    key = rng.choice(sorted(table))
    other = rng.choice(sorted(v for k, v in table.items() if k != key))
    if kind == "capital":
        question, say = f"What is the capital of {key}?", f"The capital of {key} is {{}}."
    else:
        question, say = f"What is the opposite of {key}?", f"The opposite of {key} is {{}}."
    return question, say.format(table[key]), say.format(other)


# What a model should not say: rejected answers that dodge the question.
EVASIONS = ["I would rather not say.", "Nobody knows that.", "Ask someone else.",
            "That is not something I answer."]  # fmt: skip


def record(rng: random.Random, index: int) -> dict:
    question, right, wrong = question_and_answers(rng)
    if index % 2:  # half the rejected answers are wrong, half evasive
        wrong = rng.choice(EVASIONS)
    user = {"role": "user", "content": question}
    if index % 10 == 3:  # plain strings
        return {"prompt": question, "chosen": right, "rejected": wrong}
    if index % 10 == 7:  # implicit prompt: the turns both conversations share
        return {"chosen": [user, {"role": "assistant", "content": right}],
                "rejected": [user, {"role": "assistant", "content": wrong}]}  # fmt: skip
    return {"prompt": [user], "chosen": [{"role": "assistant", "content": right}],
            "rejected": [{"role": "assistant", "content": wrong}]}  # fmt: skip


def build_lines(count: int = 400, seed: int = SEED) -> list[str]:
    rng = random.Random(seed)
    lines = [json.dumps(record(rng, i)) for i in range(count)]
    # Planted malformed lines: a rejected answer that is not a list of messages like the
    # chosen one, and a chosen conversation without an assistant turn.
    question = {"role": "user", "content": "What is 2 plus 2?"}
    lines.insert(
        50,
        json.dumps(
            {
                "prompt": [question],
                "chosen": [{"role": "assistant", "content": "4."}],
                "rejected": "5.",
            }
        ),
    )
    lines.insert(
        120,
        json.dumps(
            {
                "prompt": [question],
                "chosen": [{"role": "user", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}],
            }
        ),
    )
    return lines


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    lines = build_lines()
    OUT.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} lines to {OUT}")


if __name__ == "__main__":
    main()
