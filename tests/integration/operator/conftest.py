"""Fixtures: kmock's emulator with the CRDs loaded, and the operator running against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.integration.operator.operator_cluster import (
    TEST_SETTINGS,
    Cluster,
    RunningOperator,
    emulated_cluster,
    make_finetunejob,
)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with emulated_cluster() as emulated:
        yield emulated


@pytest.fixture
async def operator(cluster: Cluster) -> AsyncIterator[RunningOperator]:
    running = RunningOperator(cluster, TEST_SETTINGS)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
def finetunejob_factory() -> Callable[..., dict[str, Any]]:
    """make_finetunejob(name, section__field=value, ...): a valid manifest as stored."""
    return make_finetunejob
