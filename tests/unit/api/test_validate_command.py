"""`finetune validate`: exit codes and one readable line per problem, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from finetune_operator.cli import main

from tests.factories import EXAMPLES, MakeJob


def run_validate(*files) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "finetune_operator.cli", "validate", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def test_every_example_is_valid():
    code, output = run_validate(*EXAMPLES)
    assert code == 0, output
    assert output.count(": valid") == len(EXAMPLES)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed\n", "line 2, column 1: invalid YAML: expected ',' or ']'"),
        ("apiVersion: finetune.io/v1alpha1\nkind: FineTuneJob\nkind: Other\n", "line 3, column 1: invalid YAML: duplicate key 'kind'"),
        ("", "no FineTuneJob in the file"),
        ("- a\n- b\n", "expected a FineTuneJob object (a mapping), got a list"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "apiVersion: must be finetune.io/v1alpha1"),
        ("\tbad: tab\n", "invalid YAML"),
    ],
)  # fmt: skip
def test_malformed_files_get_one_clear_line(tmp_path, text, expected):
    path = write(tmp_path, "job.yaml", text)
    code, output = run_validate(path)
    assert code == 1
    assert f"{path}: " in output and expected in output
    assert "Traceback" not in output


def test_missing_file_is_reported_not_raised(tmp_path):
    code, output = run_validate(tmp_path / "nope.yaml")
    assert code == 1 and "cannot read" in output and "Traceback" not in output


def test_multi_document_files_name_the_document(tmp_path):
    bad = MakeJob().set("spec.resources.workers", 0).obj()
    path = write(tmp_path, "jobs.yaml", yaml.safe_dump_all([MakeJob().obj(), bad]))
    code, output = run_validate(path)
    assert code == 1
    assert f"{path}: spec.resources.workers: " in output and "(document 2)" in output


def test_valid_and_invalid_files_together(tmp_path, capsys):
    good = write(tmp_path, "good.yaml", yaml.safe_dump(MakeJob().obj()))
    bad = write(tmp_path, "bad.yaml", yaml.safe_dump(MakeJob().set("spec.method.type", "x").obj()))
    assert main(["validate", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{good}: valid" in captured.out
    assert f"{bad}: spec.method.type: " in captured.err


def test_every_problem_gets_its_own_line(tmp_path):
    job = (
        MakeJob()
        .set_all({"spec.resources.workers": 0, "spec.method.type": "x", "spec.typo": 1})
        .obj()
    )
    code, output = run_validate(write(tmp_path, "job.yaml", yaml.safe_dump(job)))
    problem_lines = [line for line in output.splitlines() if line.strip()]
    assert code == 1 and len(problem_lines) == 3, output
