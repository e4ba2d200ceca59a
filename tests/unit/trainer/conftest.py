"""Fixtures for the trainer's unit tests; the tiny model and data are in tests/conftest.py."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def single_process_group() -> Iterator[None]:
    """torch.distributed with one gloo rank, so DeepSpeed and our collectives run in-process."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    # A free port: other test runs on this machine hold process groups of their own.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        os.environ.setdefault("MASTER_PORT", str(probe.getsockname()[1]))
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        os.environ.setdefault(name, value)  # DeepSpeed reads these as the launchers set them
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
