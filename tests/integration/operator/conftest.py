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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The RBAC coverage check reads what every other test made the operator do: run it last."""
    last = [item for item in items if item.path.name == "test_rbac_coverage.py"]
    items[:] = [item for item in items if item not in last] + last


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
