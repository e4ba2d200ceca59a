"""Fixtures for the data stage: a tiny tokenizer/model built once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.records import QUICKSTART_DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and its ChatML tokenizer in HF format, built once per session."""
    from finetune_trainer.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny-model"), [QUICKSTART_DATA])


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def hf_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline mode as a pod gets it from HF_HUB_OFFLINE=1 set before start.

    The libraries read the variable once at import, so the constants are set too, and the
    cache points to an empty folder so nothing cached on this machine is found.
    """
    import datasets
    import huggingface_hub

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-home" / "datasets")


@pytest.fixture(autouse=True, scope="module")
def single_torch_thread():
    """The tiny model's matrices are too small to gain from threads, and on a busy 2-core
    runner torch's thread pool spins: one test took 76 s with two threads, 3.5 s with one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
