"""Fixtures: kmock's emulator with the CRDs loaded, and the operator running against it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.integration.operator.operator_cluster import (
    TEST_SETTINGS,
    Cluster,
    RunningOperator,
    emulated_cluster,
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
