"""Deterministic splits, leakage removal and replay mixing."""

from __future__ import annotations

import random

import pytest
from finetune_operator import api
from finetune_operator.validation import InvalidSpec, parse_job
from finetune_trainer.data import prepare_records
from finetune_trainer.errors import DataError

from tests.factories import MakeJob
from tests.records import arithmetic_records, chat
from tests.unit.data.data_helpers import prepare_in, write_jsonl

SPLITS = {"validationSplit": 0.2, "testSplit": 0.1}


def assignment(prepared) -> dict[str, str]:
    """Which split each record (by its answer) landed in."""
    return {
        record["messages"][-1]["content"]: name
        for name in ("train", "validation", "test")
        for record in getattr(prepared, name)
    }


def test_split_fractions_hold_roughly(tmp_path):
    prepared = prepare_in(tmp_path, arithmetic_records(1000), dataset=SPLITS)
    counts = prepared.report
    assert counts["train"] + counts["validation"] + counts["test"] == 1000
    assert 150 <= counts["validation"] <= 250
    assert 60 <= counts["test"] <= 140


def test_split_ignores_order_and_file_chunking(tmp_path):
    records = arithmetic_records(300)
    one_file = prepare_in(tmp_path / "a", records, dataset=SPLITS)
    shuffled = records[:]
    random.Random(3).shuffle(shuffled)
    for index in range(0, 300, 70):  # the same data as five files in a folder
        write_jsonl(
            tmp_path / "b" / "parts" / f"part-{index:03d}.jsonl", shuffled[index : index + 70]
        )
    chunked = prepare_records(
        MakeJob.data_stage().spec(dataset={"train": {"source": "parts"}, **SPLITS}).typed_spec(),
        base_dir=tmp_path / "b",
    )
    assert assignment(one_file) == assignment(chunked)


def test_split_depends_on_the_seed(tmp_path):
    records = arithmetic_records(300)
    seed_a = prepare_in(tmp_path, records, dataset=SPLITS)
    seed_b = prepare_in(tmp_path, records, dataset=SPLITS, hyperparameters={"seed": 7})
    assert assignment(seed_a) != assignment(seed_b)
    assert assignment(seed_a) == assignment(prepare_in(tmp_path, records, dataset=SPLITS))


def test_given_validation_source_disables_the_validation_split(tmp_path):
    write_jsonl(tmp_path / "val.jsonl", arithmetic_records(5, start=1000))
    prepared = prepare_in(
        tmp_path,
        arithmetic_records(100),
        dataset={"validation": {"source": "val.jsonl"}, "validationSplit": 0.5, "testSplit": 0.0},
    )
    assert len(prepared.validation) == 5 and len(prepared.train) == 100


def test_leakage_by_content_and_by_prompt_is_removed(tmp_path):
    train = arithmetic_records(50)
    validation = [
        train[3],  # the same record
        chat(train[4]["messages"][0]["content"], "A reworded answer."),  # the same question
        chat("A question never seen in training?", "Fine."),
    ]
    write_jsonl(tmp_path / "val.jsonl", validation)
    overrides = {"dataset": {"validation": {"source": "val.jsonl"}}}
    prepared = prepare_in(tmp_path, train, **overrides)
    assert prepared.validation == [validation[2]]
    assert prepared.report["leakage_removed"] == 2
    kept = prepare_in(
        tmp_path,
        train,
        dataset={"validation": {"source": "val.jsonl"}, "cleaning": {"removeLeakage": False}},
    )
    assert len(kept.validation) == 3 and kept.report["leakage_removed"] == 0


def test_test_records_also_in_validation_are_removed(tmp_path):
    train = arithmetic_records(40)
    shared = chat("A question asked in both evaluation sets?", "Yes.")
    shared_prompt = chat("Another shared question?", "Worded one way.")
    write_jsonl(tmp_path / "val.jsonl", [shared, shared_prompt, chat("Only in validation?", "Ok.")])
    test = [shared, chat("Another shared question?", "Worded another way."), chat("New?", "Yes.")]
    write_jsonl(tmp_path / "test.jsonl", test)
    dataset = {"validation": {"source": "val.jsonl"}, "test": {"source": "test.jsonl"}}
    prepared = prepare_in(tmp_path, train, dataset=dataset)
    assert len(prepared.validation) == 3  # validation keeps what train does not hold
    assert prepared.test == [test[2]]
    assert prepared.report["leakage_removed_by_split"] == {"validation": 0, "test": 2}
    assert prepared.report["leakage_test_in_validation"] == 2
    dataset["cleaning"] = {"removeLeakage": False}
    assert len(prepare_in(tmp_path, train, dataset=dataset).test) == 3


def test_alpaca_leakage_uses_the_instruction(tmp_path):
    train = [{"instruction": f"Spell {w}.", "input": "", "output": w} for w in ("cat", "dog")]
    write_jsonl(tmp_path / "test.jsonl", [{"instruction": "Spell cat.", "output": "c-a-t"}])
    prepared = prepare_in(
        tmp_path,
        train,
        dataset={
            "train": {"format": "alpaca"},
            "test": {"source": "test.jsonl", "format": "alpaca"},
            "validationSplit": 0.0,
        },
    )
    assert prepared.test == [] and prepared.report["leakage_removed_by_split"]["test"] == 1


@pytest.mark.parametrize(("weight", "expected"), [(0.5, 50), (2.0, 200)])
def test_mix_draws_weight_times_train_records(tmp_path, weight, expected):
    write_jsonl(tmp_path / "replay.jsonl", arithmetic_records(120, start=5000))
    overrides = {
        "dataset": {"validationSplit": 0.0, "mix": [{"source": "replay.jsonl", "weight": weight}]}
    }
    prepared = prepare_in(tmp_path, arithmetic_records(100), **overrides)
    assert len(prepared.train) == 100 + expected
    (mix,) = prepared.report["mix"]
    assert mix == {"source": "replay.jsonl", "weight": weight, "available": 120, "drawn": expected}
    # Replay records are spread through train, not appended at the end.
    replay_positions = [
        i for i, r in enumerate(prepared.train) if "500" in r["messages"][0]["content"][8:11]
    ]
    assert replay_positions and replay_positions[0] < len(prepared.train) / 4
    again = prepare_in(tmp_path, arithmetic_records(100), **overrides)
    assert again.train == prepared.train


def test_mix_of_another_chat_format_becomes_messages(tmp_path):
    replay = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(10)]
    write_jsonl(tmp_path / "replay.jsonl", replay)
    mix = [{"source": "replay.jsonl", "format": "alpaca", "weight": 0.1}]
    prepared = prepare_in(
        tmp_path, arithmetic_records(50), dataset={"validationSplit": 0.0, "mix": mix}
    )
    converted = [r for r in prepared.train if r["messages"][0]["content"].startswith("Say ")]
    assert len(converted) == 5
    assert converted[0]["messages"][1]["role"] == "assistant"


def test_incompatible_mix_format_names_the_field(tmp_path):
    write_jsonl(tmp_path / "replay.jsonl", [{"text": "plain text"}])
    mix = [{"source": "replay.jsonl", "format": "text", "weight": 0.1}]
    manifest = MakeJob.data_stage().spec(dataset={"mix": mix}).obj()
    # `finetune validate` refuses this statically now; the data stage still refuses it too,
    # for a spec that reached it some other way (the models alone, without static checks).
    with pytest.raises(InvalidSpec, match=r"spec\.dataset\.mix\[0\]\.format"):
        parse_job(manifest)
    write_jsonl(tmp_path / "train.jsonl", arithmetic_records(5))
    spec = api.FineTuneJob.model_validate(manifest).spec
    with pytest.raises(DataError, match=r"spec\.dataset\.mix\[0\]\.format"):
        prepare_records(spec, base_dir=tmp_path)
