"""Fixtures for whole `finetune run`s on a local Ray: one Ray instance for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def local_ray() -> Iterator[None]:
    """Two CPUs and a small object store, like the quickstart on a laptop."""
    import ray

    ray.init(num_cpus=2, object_store_memory=200 * 2**20, include_dashboard=False)
    yield
    ray.shutdown()
