"""Fixtures for the operator's unit tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from finetune_operator import api
from operator_unit_support import make_job


@pytest.fixture
def job_factory() -> Callable[..., api.FineTuneJob]:
    return make_job
