"""The data stage reading s3:// sources through s3fs from a moto S3 server."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from finetune_operator.cli import main
from finetune_trainer.data import prepare_records
from finetune_trainer.errors import DataError

from tests.factories import MakeJob
from tests.records import FORMAT_RECORDS as RECORDS
from tests.records import arithmetic_records

pytestmark = pytest.mark.integration


def jsonl(records: list) -> bytes:
    """JSONL bytes; a str item is written verbatim (to plant malformed lines)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def spec_for(source: str, fmt: str = "messages"):
    return (
        MakeJob.data_stage()
        .spec(dataset={"train": {"source": source, "format": fmt}, "validationSplit": 0.0})
        .typed_spec()
    )


@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_each_format_reads_from_an_s3_object(s3, fmt):
    s3.mkdir("bucket")
    s3.pipe("bucket/train.jsonl", jsonl(RECORDS[fmt]))
    prepared = prepare_records(spec_for("s3://bucket/train.jsonl", fmt))
    assert prepared.train == RECORDS[fmt]
    (source,) = prepared.report["sources"]
    (file,) = source["files"]
    assert file["path"] == "s3://bucket/train.jsonl" and file["records"] == 20


def test_a_prefix_means_every_data_object_under_it_in_order(s3):
    records = arithmetic_records(30)
    s3.mkdir("bucket")
    s3.pipe("bucket/sets/b.jsonl", jsonl(records[10:20]))
    s3.pipe("bucket/sets/a.jsonl", jsonl(records[:10]))
    s3.pipe("bucket/sets/nested/c.json", json.dumps(records[20:]).encode())
    s3.pipe("bucket/sets/README.md", b"not data")
    s3.pipe("bucket/other/d.jsonl", jsonl(arithmetic_records(5, start=100)))
    prepared = prepare_records(spec_for("s3://bucket/sets"))
    assert prepared.train == records
    paths = [f["path"] for f in prepared.report["sources"][0]["files"]]
    assert paths == ["s3://bucket/sets/a.jsonl", "s3://bucket/sets/b.jsonl",
                     "s3://bucket/sets/nested/c.json"]  # fmt: skip


def test_a_parquet_object(s3, tmp_path):
    local = tmp_path / "train.parquet"
    # Several row groups, so the reader seeks around the remote file.
    pq.write_table(pa.Table.from_pylist(RECORDS["preference"]), local, row_group_size=6)
    s3.mkdir("bucket")
    s3.put_file(str(local), "bucket/prefs/train.parquet")
    prepared = prepare_records(spec_for("s3://bucket/prefs/train.parquet", "preference"))
    assert prepared.train == RECORDS["preference"]
    (file,) = prepared.report["sources"][0]["files"]
    assert file["sha256"] and file["records"] == 20


def test_prepare_reports_malformed_lines_by_s3_name_and_line(s3, tmp_path, capsys):
    records = arithmetic_records(30)  # 2 bad of 32 stays under maxMalformedFraction 0.1
    lines = [*records[:3], "{not json", *records[3:7], '{"messages": "a string"}', *records[7:]]
    s3.mkdir("bucket")
    s3.pipe("bucket/raw/train.jsonl", jsonl(lines))
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            MakeJob.data_stage()
            .spec(dataset={"train": {"source": "s3://bucket/raw/train.jsonl"}, "testSplit": 0.0})
            .obj()
        )
    )
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["records_read"] == 32 and report["malformed"]["count"] == 2
    where = [(m["file"], m["line"]) for m in report["malformed"]["first"]]
    assert where == [("s3://bucket/raw/train.jsonl", 4), ("s3://bucket/raw/train.jsonl", 9)]
    assert "malformed s3://bucket/raw/train.jsonl:4: invalid JSON" in capsys.readouterr().out
    written = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    validation = (tmp_path / "out" / "validation.jsonl").read_text().splitlines()
    assert len(written) + len(validation) == 30


def prepare_fails(tmp_path, source: str, capsys) -> str:
    """Run `finetune prepare` on a job reading `source`; the one-line error it printed."""
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(MakeJob.data_stage().spec(dataset={"train": {"source": source}}).obj())
    )
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out" / "train.jsonl").exists()
    return captured.err.strip()


def test_a_missing_key_names_the_uri(s3, tmp_path, capsys):
    s3.mkdir("bucket")
    s3.pipe("bucket/elsewhere.jsonl", jsonl(arithmetic_records(3)))
    error = prepare_fails(tmp_path, "s3://bucket/train.jsonl", capsys)
    assert error == "error: s3://bucket/train.jsonl: no such object or prefix"


def test_a_missing_bucket_names_the_uri(s3, tmp_path, capsys):
    error = prepare_fails(tmp_path, "s3://no-such-bucket/train.jsonl", capsys)
    assert error == "error: s3://no-such-bucket/train.jsonl: no such object or prefix"


def test_missing_credentials_name_the_uri_and_the_variables(s3, tmp_path, capsys, monkeypatch):
    s3.mkdir("bucket")
    s3.pipe("bucket/train.jsonl", jsonl(arithmetic_records(3)))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    type(s3).clear_instance_cache()
    error = prepare_fails(tmp_path, "s3://bucket/train.jsonl", capsys)
    assert error.startswith("error: s3://bucket/train.jsonl: no S3 credentials")
    assert "AWS_ACCESS_KEY_ID" in error
    with pytest.raises(DataError, match=r"s3://bucket/train\.jsonl: no S3 credentials"):
        prepare_records(spec_for("s3://bucket/train.jsonl"))
