"""`stream_prepared` writes what prepare_records returns, without holding the records."""

from __future__ import annotations

import json
import tracemalloc

from finetune_trainer.data import prepare_records, write_prepared
from finetune_trainer.data.pipeline import stream_prepared, write_report

from tests.factories import MakeJob
from tests.records import arithmetic_records, chat
from tests.unit.data.data_helpers import write_jsonl


def test_streamed_files_equal_the_in_memory_result(tmp_path):
    train = arithmetic_records(400) + arithmetic_records(20)  # with duplicates
    write_jsonl(tmp_path / "train.jsonl", train)
    write_jsonl(tmp_path / "replay.jsonl", arithmetic_records(50, start=9000))
    write_jsonl(tmp_path / "test.jsonl", [train[5], chat("Unseen question?", "Unseen answer.")])
    spec = (
        MakeJob.data_stage()
        .spec(
            dataset={
                "validationSplit": 0.1,
                "test": {"source": "test.jsonl"},
                "mix": [{"source": "replay.jsonl", "weight": 0.25}],
            }
        )
        .typed_spec()
    )
    in_memory = prepare_records(spec, base_dir=tmp_path)
    write_prepared(in_memory, tmp_path / "a")
    report = stream_prepared(spec, tmp_path / "b", base_dir=tmp_path)
    write_report(report, tmp_path / "b")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "data_report.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    drawn = report["mix"][0]["drawn"]
    # Every record read is accounted for: removed with a reason, or in a split.
    removed = sum(report[k] for k in ("too_short_removed", "duplicates_removed", "leakage_removed"))
    kept = report["train"] - drawn + report["validation"] + report["test"]
    replay = report["mix"][0]["available"]  # read from the replay source, drawn from or not
    assert report["records_read"] == report["malformed"]["count"] + removed + kept + replay
    assert report["leakage_removed"] == 1 and drawn == round(0.25 * (report["train"] - drawn))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "data_report.json",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]


def test_streaming_memory_does_not_grow_with_record_size(tmp_path):
    # 400 records of ~6 KB. Streaming keeps digests, not records.
    paragraph = "The committee reviewed the annual budget and approved the plan. " * 90
    records = [chat(f"Summarise report {i}.", f"Report {i}: {paragraph}") for i in range(400)]
    write_jsonl(tmp_path / "train.jsonl", records)
    data_bytes = (tmp_path / "train.jsonl").stat().st_size
    # PII scanning is covered elsewhere and only costs time here.
    spec = (
        MakeJob.data_stage()
        .spec(dataset={"validationSplit": 0.1, "cleaning": {"redactPII": False}})
        .typed_spec()
    )

    tracemalloc.start()
    stream_prepared(spec, tmp_path / "out", base_dir=tmp_path)
    _, streamed_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    prepare_records(spec, base_dir=tmp_path)
    _, in_memory_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert data_bytes > 2_000_000
    assert streamed_peak < data_bytes / 4
    assert in_memory_peak > data_bytes  # the in-memory path does hold them: the check can fail
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    assert len(lines) + len((tmp_path / "out" / "validation.jsonl").read_text().splitlines()) == 400
    assert json.loads(lines[0])["messages"][1]["content"].endswith("plan.")
