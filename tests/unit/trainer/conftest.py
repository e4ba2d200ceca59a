"""Fixtures for the trainer's unit tests: a tiny model and dataset, built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.trainer.trainer_helpers import make_manifest, write_chat_data


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


@pytest.fixture
def manifest():
    return make_manifest


@pytest.fixture(scope="session")
def single_process_group() -> Iterator[None]:
    """torch.distributed with one gloo rank, so DeepSpeed and our collectives run in-process."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(name, value)  # DeepSpeed reads these as the launchers set them
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
