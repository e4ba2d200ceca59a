"""`finetune prepare` end to end: the quickstart data, and a bad file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from finetune_operator.cli import main

from tests.factories import MakeJob
from tests.records import QUICKSTART_DATA
from tests.unit.data.data_helpers import REPO_ROOT, write_jsonl


@pytest.fixture
def write_job(tmp_path):
    """Factory: write_job(**overrides) -> path of a job.yaml in tmp_path."""

    def write(**overrides):
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(MakeJob.data_stage().spec(**overrides).obj()))
        return path

    return write


def test_prepare_quickstart_writes_splits_and_report(tmp_path, write_job, tiny_model_dir, capsys):
    job = write_job(
        model={"source": str(tiny_model_dir)},
        dataset={"train": {"source": str(QUICKSTART_DATA)}, "maxSeqLength": 256, "testSplit": 0.05},
    )
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "data_report.json").read_text())
    splits = {
        name: (out / f"{name}.jsonl").read_text().splitlines()
        for name in ("train", "validation", "test")
    }
    for name, lines in splits.items():
        assert report[name] == len(lines) > 0
        assert all("messages" in json.loads(line) for line in lines)
    # The planted problems of the quickstart data all show up.
    assert report["malformed"]["count"] == 4
    assert report["duplicates_removed"] >= 4
    assert report["pii_redactions"]["email"] >= 2
    assert report["pii_redactions"]["phone"] >= 2
    assert report["pii_redactions"]["credit_card"] == 1
    written = "\n".join(line for lines in splits.values() for line in lines)
    assert "@example.com" not in written and "4111 1111" not in written
    assert report["tokens"] > 0 and 0 <= report["padding_ratio"] < 0.5
    assert report["records_read"] == sum(
        1 for line in QUICKSTART_DATA.read_text().splitlines() if line
    )
    # Nothing silently lost: every record read is removed with a reason or kept in a split.
    reasons = ("too_short_removed", "duplicates_removed", "leakage_removed")
    accounted = report["malformed"]["count"] + sum(report[k] for k in reasons)
    accounted += report["train"] + report["validation"] + report["test"]
    assert accounted == report["records_read"]
    (source,) = report["sources"]
    assert source["records"] == report["records_read"] and len(source["files"][0]["sha256"]) == 64
    printed = capsys.readouterr().out
    assert "malformed 4" in printed and "PII redacted" in printed


def test_prepare_without_a_loadable_tokenizer_says_why(tmp_path, write_job):
    write_jsonl(tmp_path / "train.jsonl", [json.loads(QUICKSTART_DATA.read_text().splitlines()[0])])
    job = write_job(dataset={"validationSplit": 0.0})
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["tokens"] is None and "not found" in report["tokenizer_note"]


def test_prepare_bad_file_exits_non_zero_with_one_line(tmp_path, write_job):
    write_jsonl(tmp_path / "train.jsonl", ["{oops", "not json either", '{"messages": []}'])
    job = write_job()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "finetune_operator.cli",
            "prepare",
            str(job),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: train.jsonl: 3 of 3 records are malformed")
    assert "train.jsonl:1" in line
    # Nothing half-written is left behind.
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_prepare_invalid_job_file(tmp_path, write_job, capsys):
    job = write_job(dataset={"validationSplit": 2})
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 1
    assert "spec.dataset.validationSplit" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, write_job, capsys):
    write_jsonl(tmp_path / "train.jsonl", [json.loads(QUICKSTART_DATA.read_text().splitlines()[0])])
    (tmp_path / "taken").write_text("a file where the output folder should go")
    job = write_job(dataset={"validationSplit": 0.0})
    assert main(["prepare", str(job), "--output", str(tmp_path / "taken" / "out")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'taken'}")


def test_a_bug_in_the_data_stage_keeps_its_traceback(tmp_path, write_job):
    """Only our UserErrors are one line; a plain ValueError is a bug and shows where it was."""
    write_jsonl(tmp_path / "train.jsonl", [json.loads(QUICKSTART_DATA.read_text().splitlines()[0])])
    job = write_job()
    code = (
        "import sys\n"
        "import finetune_trainer.data.pipeline as pipeline\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('a bug, not a bad input')\n"
        "pipeline.run_data_stage = broken\n"
        "from finetune_operator.cli import main\n"
        "raise SystemExit(main(sys.argv[1:]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "prepare", str(job), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "in broken" in result.stderr
    assert result.stderr.strip().endswith("ValueError: a bug, not a bad input")
