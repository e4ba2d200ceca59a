"""Fixtures: the quickstart-sized model (built once per session) and the end-to-end bed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.e2e_cluster import QUICKSTART_DATA, EndToEnd, end_to_end


@pytest.fixture(scope="session")
def quickstart_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model `make demo` trains: a tiny Llama (hidden size 512), tokenizer from the data."""
    folder = tmp_path_factory.mktemp("quickstart") / "model"
    command = [sys.executable, "-m", "finetune_trainer.tiny_model", str(folder)]
    command += ["--corpus", str(QUICKSTART_DATA), "--hidden-size", "512"]
    subprocess.run(command, check=True, capture_output=True)
    return folder


@pytest.fixture
async def e2e(quickstart_model: Path, tmp_path: Path) -> AsyncIterator[EndToEnd]:
    async with end_to_end(tmp_path, quickstart_model) as bed:
        yield bed
