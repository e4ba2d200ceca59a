"""Loss masks, over-length policies and packing of tokenised rows."""

from __future__ import annotations

import itertools

import pytest
from finetune_trainer.data import build_rows
from finetune_trainer.data.tokenize import IGNORE_INDEX, tokenize_record

from tests.factories import MakeJob
from tests.records import chat


def labelled_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode(
        [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    )


def test_only_assistant_turns_carry_loss(tiny_tokenizer):
    record = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2 plus 3?"},
            {"role": "assistant", "content": "2 plus 3 is 5."},
            {"role": "user", "content": "And 4 plus 4?"},
            {"role": "assistant", "content": "4 plus 4 is 8."},
        ]
    }
    doc = tokenize_record(
        record, "messages", tiny_tokenizer, chat_template=None, train_on_prompt=False
    )
    assert labelled_text(tiny_tokenizer, doc.input_ids, doc.labels) == (
        "2 plus 3 is 5.<|im_end|>\n4 plus 4 is 8.<|im_end|>\n"
    )
    # The token ids are exactly those of the rendered conversation.
    rendered = tiny_tokenizer.apply_chat_template(record["messages"], tokenize=False)
    assert doc.input_ids == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]


class WithoutOffsets:
    """The tiny tokenizer as a slow one: no offsets, so records are tokenised in pieces."""

    is_fast = False

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __call__(self, text, **kwargs):
        assert not kwargs.get("return_offsets_mapping")
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_tokenizers_without_offsets_label_the_same_tokens(tiny_tokenizer):
    record = chat("What is 2 plus 3?", "2 plus 3 is 5.", system="Answer briefly.")
    pieces = tokenize_record(
        record,
        "messages",
        WithoutOffsets(tiny_tokenizer),
        chat_template=None,
        train_on_prompt=False,
    )
    assert (
        labelled_text(tiny_tokenizer, pieces.input_ids, pieces.labels)
        == "2 plus 3 is 5.<|im_end|>\n"
    )
    text = tiny_tokenizer.apply_chat_template(record["messages"], tokenize=False)
    assert tiny_tokenizer.decode(pieces.input_ids) == text


def test_train_on_prompt_labels_every_token(tiny_tokenizer):
    record = chat("What is the capital of Peru?", "The capital of Peru is Lima.")
    doc = tokenize_record(
        record, "messages", tiny_tokenizer, chat_template=None, train_on_prompt=True
    )
    assert doc.labels == doc.input_ids


def test_custom_chat_template_without_generation_markers(tiny_tokenizer):
    template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    record = chat("Reverse the word stone.", "stone reversed is enots.")
    doc = tokenize_record(
        record, "messages", tiny_tokenizer, chat_template=template, train_on_prompt=False
    )
    # "[assistant] stone" tokenises with a " st" merge across the boundary: that token
    # carries answer characters, so it is learned too.
    learned = labelled_text(tiny_tokenizer, doc.input_ids, doc.labels)
    assert learned in (" stone reversed is enots.\n", "stone reversed is enots.\n")


def test_template_that_rewrites_earlier_turns_still_masks_the_prompt(tiny_tokenizer):
    # Renders the last turn differently from how a prefix ends: prefixes are not prefixes.
    template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
        "{% if loop.last %}<end>{% else %}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}\nassistant: {% endif %}"
    )
    record = chat("What is 1 plus 1?", "1 plus 1 is 2.")
    doc = tokenize_record(
        record, "messages", tiny_tokenizer, chat_template=template, train_on_prompt=False
    )
    learned = labelled_text(tiny_tokenizer, doc.input_ids, doc.labels)
    assert learned.lstrip() == "1 plus 1 is 2."


@pytest.mark.parametrize(
    ("fmt", "record", "learned"),
    [
        (
            "alpaca",
            {"instruction": "Add the numbers.", "input": "2 and 2", "output": "4"},
            "4<|im_end|>\n",
        ),
        (
            "preference",
            {"prompt": "Say hi.", "chosen": "Hello there.", "rejected": "Go away."},
            "Hello there.<|im_end|>\n",
        ),
    ],
)
def test_alpaca_and_preference_learn_the_answer_only(tiny_tokenizer, fmt, record, learned):
    doc = tokenize_record(record, fmt, tiny_tokenizer, chat_template=None, train_on_prompt=False)
    assert labelled_text(tiny_tokenizer, doc.input_ids, doc.labels) == learned
    assert "Go away" not in tiny_tokenizer.decode(doc.input_ids)


def test_text_records_learn_every_token_and_end_with_eos(tiny_tokenizer):
    doc = tokenize_record(
        {"text": "The quick brown fox."},
        "text",
        tiny_tokenizer,
        chat_template=None,
        train_on_prompt=False,
    )
    assert doc.labels == doc.input_ids
    assert doc.input_ids[-1] == tiny_tokenizer.eos_token_id


LONG = chat("Count to twenty please.", " ".join(str(i) for i in range(1, 200)))
SHORT = chat("What is 1 plus 1?", "1 plus 1 is 2.")


@pytest.mark.parametrize(
    ("policy", "expected_rows", "counted"),
    [("truncate", 2, "truncated"), ("drop", 1, "dropped"), ("chunk", None, "chunked")],
)
def test_overlength_policies(tiny_tokenizer, policy, expected_rows, counted):
    dataset = (
        MakeJob.data_stage()
        .spec(dataset={"maxSeqLength": 64, "packing": False, "cleaning": {"overlength": policy}})
        .typed_spec()
        .dataset
    )
    rows, stats = build_rows([LONG, SHORT], "messages", tiny_tokenizer, dataset)
    full = tokenize_record(
        LONG, "messages", tiny_tokenizer, chat_template=None, train_on_prompt=False
    )
    assert len(full.input_ids) > 64 * 3
    assert stats["overlength"][counted] == 1
    assert sum(stats["overlength"].values()) == 1
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    if policy == "chunk":
        # Every token survives, spread over consecutive rows.
        assert sum(len(r["input_ids"]) for r in rows) == len(full.input_ids) + len(
            tokenize_record(
                SHORT, "messages", tiny_tokenizer, chat_template=None, train_on_prompt=False
            ).input_ids
        )
    else:
        assert len(rows) == expected_rows
    if policy == "truncate":
        assert rows[0]["input_ids"] == full.input_ids[:64]


def test_chunks_without_any_answer_tokens_are_not_kept(tiny_tokenizer):
    long_prompt = chat(" ".join(["word"] * 300), "ok")
    dataset = (
        MakeJob.data_stage()
        .spec(
            dataset={"maxSeqLength": 32, "packing": False, "cleaning": {"overlength": "truncate"}}
        )
        .typed_spec()
        .dataset
    )
    rows, stats = build_rows([long_prompt], "messages", tiny_tokenizer, dataset)
    assert rows == []
    assert stats["overlength"] == {"truncated": 0, "dropped": 1, "chunked": 0}


def test_packing_fills_rows_and_restarts_positions(tiny_tokenizer):
    records = [chat(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(40)]
    unpacked_spec = (
        MakeJob.data_stage()
        .spec(dataset={"maxSeqLength": 128, "packing": False})
        .typed_spec()
        .dataset
    )
    packed_spec = (
        MakeJob.data_stage()
        .spec(dataset={"maxSeqLength": 128, "packing": True})
        .typed_spec()
        .dataset
    )
    unpacked, unpacked_stats = build_rows(records, "messages", tiny_tokenizer, unpacked_spec)
    packed, packed_stats = build_rows(records, "messages", tiny_tokenizer, packed_spec)
    assert len(packed) < len(unpacked) / 3
    assert packed_stats["tokens"] == unpacked_stats["tokens"]
    assert packed_stats["loss_tokens"] == unpacked_stats["loss_tokens"]
    documents = 0
    for row in packed:
        assert len(row["input_ids"]) <= 128
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
        assert starts[0] == 0
        documents += len(starts)
        for start in starts:  # a document's first token is never a loss target
            assert row["labels"][start] == IGNORE_INDEX
        bounds = [*starts, len(row["input_ids"])]
        for start, end in itertools.pairwise(bounds):
            assert row["position_ids"][start:end] == list(range(end - start))
    assert documents == len(records)
    assert packed_stats["padding_ratio"] < unpacked_stats["padding_ratio"]


def test_a_tokenizer_without_chat_template_needs_one_in_the_spec(tiny_model_dir):
    from finetune_trainer.errors import DataError
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(tiny_model_dir)
    bare.chat_template = None
    with pytest.raises(DataError, match=r"spec\.dataset\.chatTemplate"):
        build_rows([SHORT], "messages", bare, MakeJob.data_stage().typed_spec().dataset)
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    rows, _ = build_rows(
        [SHORT],
        "messages",
        bare,
        MakeJob.data_stage().spec(dataset={"chatTemplate": template}).typed_spec().dataset,
    )
    assert (
        bare.decode(rows[0]["input_ids"]) == "user: What is 1 plus 1?\nassistant: 1 plus 1 is 2.\n"
    )
    text_rows, _ = build_rows(
        [{"text": "plain"}], "text", bare, MakeJob.data_stage().typed_spec().dataset
    )
    assert len(text_rows) == 1


def test_packing_is_near_optimal_and_keeps_every_document():
    import math
    import random

    from finetune_trainer.data.packing import _pack_lengths

    rng = random.Random(0)
    lengths = [rng.randint(20, 1500) for _ in range(5000)]
    rows = _pack_lengths(lengths, 2048)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 2048 for row in rows)
    assert len(rows) <= math.ceil(sum(lengths) / 2048) * 1.01


def test_token_stats_match_build_rows_without_keeping_rows(tiny_tokenizer):
    from finetune_trainer.data.packing import token_stats

    records = [LONG, SHORT, *(chat(f"Say {i}.", f"{i} " * (i % 30 + 1)) for i in range(60))]
    for packing in (True, False):
        dataset = (
            MakeJob.data_stage()
            .spec(
                dataset={
                    "maxSeqLength": 96,
                    "packing": packing,
                    "cleaning": {"overlength": "chunk"},
                }
            )
            .typed_spec()
            .dataset
        )
        _, from_rows = build_rows(records, "messages", tiny_tokenizer, dataset)
        streamed = token_stats(iter(records), "messages", tiny_tokenizer, dataset)
        assert streamed == from_rows


def test_a_template_that_rejects_a_conversation_gives_a_clear_error(tiny_tokenizer):
    from finetune_trainer.errors import DataError

    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    dataset = MakeJob.data_stage().spec(dataset={"chatTemplate": template}).typed_spec().dataset
    record = chat("Hi?", "Hello.", system="Be brief.")
    with pytest.raises(DataError, match=r"system/user/assistant.*System role not supported"):
        build_rows([record], "messages", tiny_tokenizer, dataset)
