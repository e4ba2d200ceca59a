"""Fixtures for the operator's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from finetune_operator import api

from tests.unit.operator.operator_unit_support import make_finetunejob, make_job


@pytest.fixture
def finetunejob_factory() -> Callable[..., dict[str, Any]]:
    """make_finetunejob(name, section__field=value, ...): a valid manifest dict."""
    return make_finetunejob


@pytest.fixture
def typed_job_factory() -> Callable[..., api.FineTuneJob]:
    """make_job(name, section__field=value, ...): the parsed, validated job."""
    return make_job
