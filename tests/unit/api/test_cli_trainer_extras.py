"""`finetune run` / `prepare` where the trainer extras are missing (the operator image)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from finetune_operator.cli import TRAINER_MODULES, is_trainer_module, main

from tests.factories import REPO, MakeJob

# Runs the CLI as if torch, ray and transformers were not installed.
WITHOUT_TRAINER = """
import sys

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "ray", "transformers"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Uninstalled())
from finetune_operator.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.fixture
def job_file(tmp_path: Path) -> Path:
    """A valid job with local data and a model folder (empty: nothing gets to read it)."""
    record = {
        "messages": [
            {"role": "user", "content": "What colour is the sky?"},
            {"role": "assistant", "content": "The sky is blue."},
        ]
    }
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    (tmp_path / "model").mkdir()
    job = (
        MakeJob()
        .model("model")
        .train("train.jsonl")
        .output("out")
        .set("spec.dataset.validationSplit", 0.0)
        .obj()
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def run_without_trainer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAINER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("command", ["run", "prepare"])
def test_a_missing_trainer_extra_is_one_line_naming_it(job_file: Path, command: str) -> None:
    output = ["--output", str(job_file.parent / "prepared")] if command == "prepare" else []
    result = run_without_trainer(command, str(job_file), *output)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"finetune {command}: no module named ")
    assert re.search(r"'(torch|ray|transformers)'", line)
    assert "pip install 'finetune-operator[trainer]' (install torch first)" in line


def test_another_missing_module_keeps_its_traceback(
    job_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "finetune_trainer.data.command", None)
    with pytest.raises(ModuleNotFoundError):
        main(["prepare", str(job_file), "--output", str(job_file.parent / "prepared")])


def test_validate_is_never_told_to_install_the_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "finetune_operator.render", None)
    with pytest.raises(ModuleNotFoundError):
        main(["render", "job.yaml"])


def test_every_package_of_the_trainer_extra_is_known_by_import_name() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["trainer"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None
        module = name.group(0).lower().replace("-", "_")
        assert is_trainer_module(module), module
    assert is_trainer_module("torch.nn") and not is_trainer_module("yaml")
    assert "finetune_trainer" not in TRAINER_MODULES
