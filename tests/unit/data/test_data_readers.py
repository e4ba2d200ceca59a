"""Every format from every locally reachable source kind and file type."""

from __future__ import annotations

import json

import fsspec
import pytest
from finetune_trainer import storage
from finetune_trainer.data import prepare_records
from finetune_trainer.data.readers import HF_MIRROR_ENV
from finetune_trainer.errors import DataError

from tests.factories import MakeJob
from tests.records import FORMAT_RECORDS as RECORDS
from tests.records import arithmetic_records, chat
from tests.unit.data.data_helpers import write_jsonl


def spec_for(source, fmt="messages", **dataset):
    return (
        MakeJob.data_stage()
        .spec(
            dataset={"train": {"source": source, "format": fmt}, "validationSplit": 0.0, **dataset}
        )
        .typed_spec()
    )


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_each_format_reads_from_jsonl(tmp_path, fmt):
    write_jsonl(tmp_path / "train.jsonl", RECORDS[fmt])
    prepared = prepare_records(spec_for("train.jsonl", fmt), base_dir=tmp_path)
    assert prepared.format == fmt
    assert prepared.train == RECORDS[fmt]
    assert prepared.report["records_read"] == 20 and prepared.report["malformed"]["count"] == 0


def test_json_array_and_object_with_a_list(tmp_path):
    records = RECORDS["alpaca"]
    (tmp_path / "array.json").write_text(json.dumps(records))
    (tmp_path / "object.json").write_text(json.dumps({"version": 1, "data": records}))
    for name in ("array.json", "object.json"):
        prepared = prepare_records(spec_for(name, "alpaca"), base_dir=tmp_path)
        assert prepared.train == records


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(RECORDS["preference"]), tmp_path / "train.parquet")
    prepared = prepare_records(spec_for("train.parquet", "preference"), base_dir=tmp_path)
    assert prepared.train == RECORDS["preference"]
    (file_lineage,) = prepared.report["sources"][0]["files"]
    assert file_lineage["records"] == 20 and len(file_lineage["sha256"]) == 64


def test_a_folder_means_all_data_files_in_it_sorted(tmp_path):
    records = arithmetic_records(30)
    write_jsonl(tmp_path / "data" / "b.jsonl", records[10:20])
    write_jsonl(tmp_path / "data" / "a.jsonl", records[:10])
    (tmp_path / "data" / "c.json").write_text(json.dumps(records[20:]))
    (tmp_path / "data" / "README.md").write_text("not data")
    prepared = prepare_records(spec_for("data"), base_dir=tmp_path)
    assert prepared.train == records
    files = [f["path"] for f in prepared.report["sources"][0]["files"]]
    assert [f.rsplit("/", 1)[1] for f in files] == ["a.jsonl", "b.jsonl", "c.json"]


def test_file_and_pvc_uris(tmp_path, monkeypatch):
    records = arithmetic_records(10)
    write_jsonl(tmp_path / "claim" / "sets" / "train.jsonl", records)
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(tmp_path))
    by_pvc = prepare_records(spec_for("pvc://claim/sets/train.jsonl"))
    by_file = prepare_records(spec_for(f"file://{tmp_path}/claim/sets/train.jsonl"))
    assert by_pvc.train == by_file.train == records
    assert by_pvc.report["sources"][0]["source"] == "pvc://claim/sets/train.jsonl"


def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl"):
        prepare_records(spec_for("nope.jsonl"), base_dir=tmp_path)


def test_corrupt_json_document_is_an_error_with_its_line(tmp_path):
    (tmp_path / "train.json").write_text('[\n{"text": "a"},\n{"text": \n')
    with pytest.raises(DataError, match=r"train.json: line \d+: invalid JSON"):
        prepare_records(spec_for("train.json", "text"), base_dir=tmp_path)


def test_hf_dataset_saved_to_disk_in_offline_mode(tmp_path, monkeypatch, hf_offline):
    import datasets

    monkeypatch.setenv(HF_MIRROR_ENV, str(tmp_path / "mirror"))
    dataset = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(RECORDS["alpaca"][:15]),
            "eval": datasets.Dataset.from_list(RECORDS["alpaca"][15:]),
        }
    )
    dataset.save_to_disk(str(tmp_path / "mirror" / "acme" / "maths"))
    spec = (
        MakeJob.data_stage()
        .spec(
            dataset={
                "train": {"source": "hf://acme/maths", "format": "alpaca"},
                "validation": {"source": "hf://acme/maths", "format": "alpaca", "split": "eval"},
            }
        )
        .typed_spec()
    )
    prepared = prepare_records(spec)
    assert prepared.train == RECORDS["alpaca"][:15]
    assert prepared.validation == RECORDS["alpaca"][15:]
    assert prepared.report["sources"][1]["files"][0]["path"] == "hf://acme/maths[eval]"


def test_hf_dataset_from_data_files_folder(tmp_path, monkeypatch, hf_offline):
    monkeypatch.setenv(HF_MIRROR_ENV, str(tmp_path / "mirror"))
    write_jsonl(tmp_path / "mirror" / "acme" / "chat" / "train.jsonl", RECORDS["messages"])
    prepared = prepare_records(spec_for("hf://acme/chat"))
    assert prepared.train == RECORDS["messages"]


def test_hf_dataset_missing_offline_says_so(monkeypatch, hf_offline):
    monkeypatch.delenv(HF_MIRROR_ENV, raising=False)
    with pytest.raises(DataError, match=r"hf://acme/absent.*offline mode is on"):
        prepare_records(spec_for("hf://acme/absent"))


def test_s3_prefix_lists_and_streams_objects_in_order(monkeypatch):
    # The S3 transport is replaced by fsspec's in-memory filesystem (same fsspec API);
    # this covers our listing, ordering and line numbering, not s3fs or the network.
    memory = fsspec.filesystem("memory")
    records = arithmetic_records(12)
    memory.pipe("/bucket/sets/2.jsonl", "".join(json.dumps(r) + "\n" for r in records[6:]).encode())
    memory.pipe("/bucket/sets/1.jsonl", "".join(json.dumps(r) + "\n" for r in records[:6]).encode())
    memory.pipe("/bucket/sets/notes.txt", b"ignored")
    monkeypatch.setattr(storage, "s3_filesystem", lambda: memory)
    prepared = prepare_records(spec_for("s3://bucket/sets"))
    assert prepared.train == records
    assert [f["records"] for f in prepared.report["sources"][0]["files"]] == [6, 6]


def test_corrupt_parquet_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1 but not really parquet")
    with pytest.raises(DataError, match=r"train\.parquet: not a readable Parquet file"):
        prepare_records(spec_for("train.parquet", "text"), base_dir=tmp_path)


def test_gzipped_jsonl_and_openai_content_parts(tmp_path):
    import gzip
    import hashlib

    parts = [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there?"}]
    image = [{"type": "image_url", "image_url": "x"}]
    records = [
        {
            "messages": [
                {"role": "user", "content": parts},
                {"role": "assistant", "content": "Hello."},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": image},
                {"role": "assistant", "content": "A cat."},
            ]
        },
        *arithmetic_records(20),
    ]
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "train.jsonl.gz").write_bytes(gzip.compress(data))
    prepared = prepare_records(spec_for("train.jsonl.gz"), base_dir=tmp_path)
    assert prepared.train[0] == chat("Hi\nthere?", "Hello.")
    assert prepared.report["malformed"]["first"][0]["line"] == 2
    assert "non-text part (image_url)" in prepared.report["malformed"]["first"][0]["reason"]
    (file_lineage,) = prepared.report["sources"][0]["files"]
    expected = hashlib.sha256((tmp_path / "train.jsonl.gz").read_bytes()).hexdigest()
    assert file_lineage["sha256"] == expected and file_lineage["records"] == 22


@pytest.mark.parametrize("problem", ["not gzip", "truncated"])
def test_an_unreadable_gzip_file_is_an_error_naming_it(tmp_path, problem):
    import gzip

    data = "".join(json.dumps(r) + "\n" for r in arithmetic_records(50)).encode()
    compressed = gzip.compress(data)
    broken = b"plain text, no gzip header" if problem == "not gzip" else compressed[:-40]
    (tmp_path / "train.jsonl.gz").write_bytes(broken)
    with pytest.raises(DataError, match=r"train\.jsonl\.gz: cannot read: "):
        prepare_records(spec_for("train.jsonl.gz"), base_dir=tmp_path)
