"""The data stage on Ray Data: the same records, splits, pseudonyms and report counts as in
the driver, whatever the number of workers and block size; errors name the file and line."""

from __future__ import annotations

import json

import pytest
from finetune_trainer.data import prepare_records
from finetune_trainer.data.pipeline import stream_prepared
from finetune_trainer.errors import DataError

from tests.factories import MakeJob
from tests.records import arithmetic_records, chat
from tests.unit.data.data_helpers import write_jsonl

pytestmark = pytest.mark.integration

PEOPLE = [("Anna Berg", "anna.berg@example.org"), ("Tom Hale", "tom.hale@example.net")]


def records_with_pii(count: int) -> list[object]:
    """Chats naming people and e-mail addresses, with duplicates, bad lines and short ones."""
    records: list[object] = []
    for i in range(count):
        name, email = PEOPLE[i % len(PEOPLE)]
        records.append(
            chat(
                f"Case {i}: {name} wrote from {email} about invoice {1000 + i}.",
                f"Thanks. I will call {name.split()[0]} about invoice {1000 + i} today.",
            )
        )
    records[7] = records[3]  # a duplicate
    records[11] = "{not json"  # malformed, named by file and line
    records[13] = chat("Hi", "Ok")  # shorter than minChars
    return records


@pytest.fixture
def job_files(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", records_with_pii(60))
    leaked = records_with_pii(60)[20]
    write_jsonl(tmp_path / "val.jsonl", [leaked, chat("An unseen question?", "An unseen answer.")])
    write_jsonl(tmp_path / "replay.jsonl", arithmetic_records(12, start=500))
    return tmp_path


def spec_of(**dataset):
    cleaning = {"dedup": "exact", "minChars": 10, "pii": {"mode": "pseudonymize"}}
    return MakeJob.data_stage().spec(dataset={"cleaning": cleaning, **dataset}).typed_spec()


def test_any_worker_count_and_block_size_gives_the_drivers_result(local_ray, job_files):
    spec = spec_of(
        validation={"source": "val.jsonl"},
        testSplit=0.2,
        mix=[{"source": "replay.jsonl", "weight": 0.5}],
    )
    in_driver = prepare_records(spec, base_dir=job_files)
    for workers, block_records in ((1, 64), (2, 3)):
        on_ray = prepare_records(
            spec, base_dir=job_files, workers=workers, block_records=block_records
        )
        for split in ("train", "validation", "test"):
            assert getattr(on_ray, split) == getattr(in_driver, split), (workers, split)
        assert on_ray.report == in_driver.report, (workers, block_records)
    report = in_driver.report
    assert report["malformed"]["first"][0]["line"] == 12
    assert report["duplicates_removed"] == 1 and report["too_short_removed"] == 1
    assert report["leakage_removed_by_split"]["validation"] == 1
    assert report["pii_redactions"]["email"] >= 58 and report["pii_redactions"]["person"] >= 58
    assert report["sources"][0]["files"][0]["records"] == 60
    texts = json.dumps(in_driver.train + in_driver.validation + in_driver.test)
    assert "Anna" not in texts and "example.org" not in texts
    # Pseudonyms stay consistent across turns on the workers too.
    first = in_driver.train[0]["messages"]
    assert "<PERSON_1>" in first[0]["content"] and "<PERSON_1>" in first[1]["content"]


def test_too_many_bad_lines_fail_naming_file_and_line_and_write_nothing(local_ray, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [chat("A question?", "An answer.")] + ["{bad"] * 3)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"train\.jsonl:2 \("):
        stream_prepared(spec_of(), out, base_dir=tmp_path, workers=2, block_records=1)
    assert list(out.iterdir()) == []  # no half-written split files


def test_a_reading_error_on_a_worker_reaches_the_driver_as_ours(local_ray, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", arithmetic_records(10))
    spec = spec_of(validation={"source": "missing.jsonl"})
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file or folder"):
        prepare_records(spec, base_dir=tmp_path, workers=2)
