"""Fixtures for whole `finetune run`s on a local Ray: one Ray instance for the session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The job and data builders are shared with the trainer's unit tests.
sys.path.insert(0, str(Path(__file__).parents[2] / "unit" / "trainer"))

from tests.unit.trainer.trainer_helpers import write_chat_data


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """Two CPUs and a small object store, like the quickstart on a laptop."""
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune_trainer.tiny_model import write_tiny_model

    folder = tmp_path_factory.mktemp("trainer-integration")
    data = write_chat_data(folder / "train.jsonl", 160)
    write_tiny_model(folder / "model", [data], vocab_size=384, hidden_size=64)
    return folder


@pytest.fixture
def job_dir(workspace: Path, tmp_path: Path) -> Path:
    (tmp_path / "model").symlink_to(workspace / "model")
    (tmp_path / "train.jsonl").symlink_to(workspace / "train.jsonl")
    return tmp_path
