"""Malformed records, normalisation, too-short records and deduplication."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.data import prepare_records
from finetune_trainer.data.normalize import normalize_text
from finetune_trainer.errors import DataError

from tests.factories import MakeJob
from tests.records import arithmetic_records, chat
from tests.unit.data.data_helpers import prepare_in

NO_SPLIT = {"validationSplit": 0.0}


def test_malformed_records_below_threshold_are_counted_with_file_and_line(tmp_path):
    good = arithmetic_records(80)
    bad = [
        "{not json",
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
        json.dumps({"prompt": "wrong format"}),
        json.dumps(["a", "list"]),
    ]
    lines = good[:10] + bad + good[10:]
    prepared = prepare_in(tmp_path, lines, dataset=NO_SPLIT)
    malformed = prepared.report["malformed"]
    assert malformed["count"] == len(bad)
    assert [entry["line"] for entry in malformed["first"]] == list(range(11, 11 + len(bad)))
    assert all(entry["file"].endswith("train.jsonl") for entry in malformed["first"])
    reasons = [entry["reason"] for entry in malformed["first"]]
    assert "invalid JSON" in reasons[0]
    assert "'messages' is empty" in reasons[1]
    assert "wizard" in reasons[2]
    assert "no non-empty assistant message" in reasons[3]
    assert "messages[0].content" in reasons[4]
    assert "missing key 'messages'" in reasons[5]
    assert "expected a JSON object" in reasons[6]
    # Nothing silently lost: every record read is accounted for.
    assert prepared.report["records_read"] == len(lines)
    assert len(prepared.train) == len(good)


def test_malformed_above_threshold_fails_naming_file_and_lines(tmp_path):
    lines = [*arithmetic_records(8), "{broken", '{"text": "wrong shape"}', "[1, 2]"]
    with pytest.raises(DataError) as caught:
        prepare_in(tmp_path, lines, dataset=NO_SPLIT)
    message = str(caught.value)
    assert "train.jsonl" in message
    assert "3 of 11 records are malformed" in message
    assert "maxMalformedFraction=0.1" in message
    assert "train.jsonl:9" in message and "train.jsonl:10" in message


def test_threshold_is_configurable(tmp_path):
    lines = [*arithmetic_records(8), "{broken", "{broken too"]
    prepared = prepare_in(
        tmp_path, lines, dataset={**NO_SPLIT, "cleaning": {"maxMalformedFraction": 0.5}}
    )
    assert prepared.report["malformed"]["count"] == 2


def test_blank_lines_are_not_records(tmp_path):
    path = tmp_path / "train.jsonl"
    prepared = prepare_in(tmp_path, arithmetic_records(3), dataset=NO_SPLIT)
    text = path.read_text()
    path.write_text("\n\n" + text.replace("\n", "\n\n"))
    again = prepare_records(
        MakeJob.data_stage().spec(dataset=NO_SPLIT).typed_spec(), base_dir=tmp_path
    )
    assert again.train == prepared.train and again.report["malformed"]["count"] == 0


def test_unicode_and_whitespace_are_normalised_but_indentation_kept():
    text = "Cafe\u0301 \u200bmenu\r\n  indented line   \r\n\n\n\n\nend\u00a0here\x07"
    assert normalize_text(text) == "Café menu\n  indented line\n\nend here"


def test_stored_records_are_normalised(tmp_path):
    prepared = prepare_in(
        tmp_path, [chat("  Cafe\u0301?  ", "Yes.\r\n\r\n\r\n\r\nIt is.")], dataset=NO_SPLIT
    )
    assert prepared.train == [chat("Café?", "Yes.\n\nIt is.")]


def test_empty_and_too_short_records_are_removed_and_counted(tmp_path):
    records = [{"text": "   "}, {"text": "ok"}, {"text": "a long enough paragraph of text"}]
    prepared = prepare_in(
        tmp_path,
        records,
        dataset={"train": {"format": "text"}, **NO_SPLIT, "cleaning": {"minChars": 10}},
    )
    assert prepared.train == [{"text": "a long enough paragraph of text"}]
    assert prepared.report["too_short_removed"] == 2


def test_exact_dedup_on_normalised_content(tmp_path):
    base = arithmetic_records(10)
    copies = [
        chat("What is 1 plus 2?", "1 plus 2 is 3."),  # identical to base[1]
        chat("what  is 1 PLUS 2?", "1 plus 2 is 3.\n"),  # same after case/space folding
    ]
    prepared = prepare_in(tmp_path, base + copies, dataset=NO_SPLIT)
    assert prepared.train == base
    assert prepared.report["duplicates_removed"] == 2


def test_dedup_none_keeps_copies(tmp_path):
    records = arithmetic_records(5) * 2
    prepared = prepare_in(tmp_path, records, dataset={**NO_SPLIT, "cleaning": {"dedup": "none"}})
    assert len(prepared.train) == 10 and prepared.report["duplicates_removed"] == 0


LONG_ANSWER = (
    "The river flows from the mountains through green valleys and old towns, passing "
    "bridges, mills and fields of wheat before it reaches the wide delta and the sea."
)


def test_near_dedup_catches_small_edits_only_when_asked(tmp_path):
    records = [
        chat("Describe the river.", LONG_ANSWER),
        chat("Describe the river.", LONG_ANSWER.replace("old towns", "ancient towns")),
        chat("Describe the desert.", "Sand dunes stretch to the horizon under a pale sky."),
    ]
    exact = prepare_in(tmp_path, records, dataset=NO_SPLIT)
    near = prepare_in(
        tmp_path,
        records,
        dataset={**NO_SPLIT, "cleaning": {"dedup": "near", "nearDedupThreshold": 0.7}},
    )
    assert exact.report["duplicates_removed"] == 0
    assert near.report["duplicates_removed"] == 1
    assert near.train == [records[0], records[2]]
