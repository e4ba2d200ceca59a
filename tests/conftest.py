"""Fixtures shared by every test directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.records import write_chat_data


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with train.jsonl and model/ (a tiny Llama) beside where job files go."""
    from finetune_trainer.tiny_model import write_tiny_model

    folder = tmp_path_factory.mktemp("trainer-workspace")
    data = write_chat_data(folder / "train.jsonl", 160)
    write_tiny_model(folder / "model", [data], vocab_size=384, hidden_size=64)
    return folder


@pytest.fixture
def job_dir(workspace: Path, tmp_path: Path) -> Path:
    """A fresh folder for one test's job file, with links to the shared model and data."""
    (tmp_path / "model").symlink_to(workspace / "model")
    (tmp_path / "train.jsonl").symlink_to(workspace / "train.jsonl")
    return tmp_path
