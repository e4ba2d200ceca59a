"""Preference records, plain and conversational: reading them, counting the malformed ones,
and the DPO pair rows made from them (labels on the answers only)."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.data.formats import MalformedRecord, check_record
from finetune_trainer.data.pairs import build_pairs
from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.model import load_tokenizer

from tests.factories import MakeJob
from tests.unit.data.data_helpers import prepare_in


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def pair(i: int) -> dict:
    return {"prompt": [user(f"Name a colour, please ({i})")],
            "chosen": [assistant(f"Blue, number {i}.")],
            "rejected": [assistant(f"I will not, {i}.")]}  # fmt: skip


def test_conversational_records_are_read_in_each_of_trls_shapes():
    explicit = check_record(pair(1), "preference")
    assert explicit == {"prompt": [user("Name a colour, please (1)")],
                        "chosen": [assistant("Blue, number 1.")],
                        "rejected": [assistant("I will not, 1.")]}  # fmt: skip
    # Without `prompt`, the turns both conversations begin with are the prompt.
    implicit = check_record(
        {"chosen": [user("Hi"), assistant("Hello!"), user("Colour?"), assistant("Blue.")],
         "rejected": [user("Hi"), assistant("Hello!"), user("Colour?"), assistant("No.")]},
        "preference",
    )  # fmt: skip
    assert implicit["prompt"] == [user("Hi"), assistant("Hello!"), user("Colour?")]
    assert implicit["chosen"] == [assistant("Blue.")]
    assert implicit["rejected"] == [assistant("No.")]
    # A string prompt is one user turn; text parts are joined as in messages.
    mixed = check_record(
        {"prompt": "Colour?", "chosen": [{"role": "assistant", "content": [
            {"type": "text", "text": "Blue"}, {"type": "text", "text": "indeed"}]}],
         "rejected": [assistant("No.")]},
        "preference",
    )  # fmt: skip
    assert mixed["prompt"] == [user("Colour?")] and mixed["chosen"] == [assistant("Blue\nindeed")]
    # The plain form is unchanged.
    plain = {"prompt": "Colour?", "chosen": "Blue.", "rejected": "No."}
    assert check_record(plain | {"extra": 1}, "preference") == plain


@pytest.mark.parametrize(
    ("record", "says"),
    [
        ({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": "b"}, "'rejected' must"),
        ({"prompt": [user("q")], "chosen": [assistant("a")]}, "'rejected' must be a list"),
        (
            {
                "prompt": [user("q")],
                "chosen": [{"role": "robot", "content": "a"}],
                "rejected": [assistant("b")],
            },
            "chosen[0].role",
        ),
        (
            {"prompt": [user("q")], "chosen": [assistant("")], "rejected": [assistant("b")]},
            "'chosen' has no non-empty assistant message",
        ),
        (
            {"prompt": [user("q")], "chosen": [assistant("a")], "rejected": [user("b")]},
            "'rejected' has no assistant message",
        ),
        ({"prompt": 3, "chosen": [assistant("a")], "rejected": [assistant("b")]}, "'prompt' must"),
        (
            {"prompt": [user(7)], "chosen": [assistant("a")], "rejected": [assistant("b")]},
            "prompt[0].content",
        ),
        (
            {"chosen": [user("q"), assistant("a")], "rejected": [user("q"), assistant("a")]},
            "'chosen' has no non-empty assistant message",
        ),
    ],
)
def test_a_malformed_conversational_record_says_what_is_wrong(record, says):
    with pytest.raises(MalformedRecord, match=None) as error:
        check_record(record, "preference")
    assert says in str(error.value)


def test_malformed_preference_lines_are_counted_with_their_line_numbers(tmp_path):
    good = [pair(i) for i in range(40)]
    bad = [
        json.dumps({"prompt": [user("q")], "chosen": [assistant("a")], "rejected": "b"}),
        json.dumps({"prompt": "q", "chosen": "", "rejected": "b"}),
        "{not json",
    ]
    lines = good[:5] + bad + good[5:]
    prepared = prepare_in(tmp_path, lines, dataset={
        "train": {"source": "train.jsonl", "format": "preference"}, "validationSplit": 0.0,
        "cleaning": {"redactPII": False}})  # fmt: skip
    malformed = prepared.report["malformed"]
    assert malformed["count"] == 3
    assert [entry["line"] for entry in malformed["first"]] == [6, 7, 8]
    assert "'rejected' must be a list" in malformed["first"][0]["reason"]
    assert len(prepared.train) == 40
    # Conversational records go through cleaning and come out as lists of messages.
    assert all(isinstance(r["chosen"], list) for r in prepared.train)


def test_pair_rows_learn_only_the_answers(workspace):
    tokenizer = load_tokenizer(workspace / "model", MakeJob.trainer().typed_spec().model)
    dataset = MakeJob.trainer().spec(method={"objective": "dpo"}).train(
        "p.jsonl", fmt="preference").typed_spec().dataset  # fmt: skip
    multi_turn = check_record(
        {"prompt": [user("Hi"), assistant("Hello there!"), user("A colour?")],
         "chosen": [assistant("Blue.")], "rejected": [assistant("Never.")]},
        "preference",
    )  # fmt: skip
    plain = check_record({"prompt": "A fruit?", "chosen": "Pear.", "rejected": "No."}, "preference")
    rows, stats = build_pairs([multi_turn, plain], tokenizer, dataset)
    assert stats["pairs"] == stats["rows"] == 2 and stats["documents"] == 4

    def learned(row: dict) -> list[str]:
        """The learned text of the chosen and of the rejected document."""
        restart = row["position_ids"].index(0, 1)
        halves = (slice(0, restart), slice(restart, None))
        return [
            tokenizer.decode([t for t in row["labels"][half] if t != IGNORE_INDEX])
            for half in halves
        ]

    # Only the answer turn and its end marker: not the prompt's own assistant turn.
    chosen, rejected = learned(rows[0])
    assert chosen.startswith("Blue.") and "Hello there" not in chosen
    assert rejected.startswith("Never.") and "Hello there" not in rejected
    assert [text.split("<")[0] for text in learned(rows[1])] == ["Pear.", "No."]
    # Each conversation is its own document (position ids restart) and renders whole.
    restart = rows[1]["position_ids"].index(0, 1)
    assert tokenizer.decode(rows[1]["input_ids"][:restart]).count("A fruit?") == 1
    assert tokenizer.decode(rows[1]["input_ids"][restart:]).count("A fruit?") == 1


def test_overlong_pairs_are_truncated_or_dropped_whole(workspace):
    tokenizer = load_tokenizer(workspace / "model", MakeJob.trainer().typed_spec().model)
    long_prompt = "word " * 200
    records = [
        check_record({"prompt": "Short?", "chosen": "Yes. " * 20, "rejected": "No."},
                     "preference"),
        check_record({"prompt": long_prompt, "chosen": "Yes.", "rejected": "No."}, "preference"),
    ]  # fmt: skip

    def build(policy: str):
        dataset = (
            MakeJob.trainer()
            .spec(dataset={"maxSeqLength": 32, "cleaning": {"overlength": policy}})
            .typed_spec()
            .dataset
        )
        return build_pairs(records, tokenizer, dataset)

    rows, stats = build("truncate")
    # The first keeps the start of its long answer; the second's answers were cut away.
    assert stats["overlength"] == {"truncated": 1, "dropped": 1, "chunked": 0}
    assert len(rows) == 1
    restart = rows[0]["position_ids"].index(0, 1)
    assert restart == 32 and len(rows[0]["input_ids"]) - restart <= 32
    rows, stats = build("drop")
    assert stats["overlength"]["dropped"] == 2 and rows == []


def test_prepare_previews_the_token_counts_of_dpo_pairs(workspace, tmp_path):
    from finetune_trainer.data.command import add_token_stats

    tokenizer = load_tokenizer(workspace / "model", MakeJob.trainer().typed_spec().model)
    dataset = MakeJob.trainer().typed_spec().dataset
    records = [check_record(pair(i), "preference") for i in range(6)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    sft, dpo = {"format": "preference"}, {"format": "preference"}
    add_token_stats(sft, train, tokenizer, dataset, None)
    add_token_stats(dpo, train, tokenizer, dataset, None, pairs=True)
    # A DPO row holds the chosen and the rejected conversation; sft learns prompt + chosen.
    assert dpo["rows"] == 6 and dpo["tokens"] > sft["tokens"]
    assert dpo["tokens"] == sum(
        len(r["input_ids"]) for r in build_pairs(records, tokenizer, dataset)[0]
    )
