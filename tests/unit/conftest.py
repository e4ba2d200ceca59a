"""Unit tests run the data stage in the test process; tests/integration runs it on Ray Data."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def data_stage_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "0")
