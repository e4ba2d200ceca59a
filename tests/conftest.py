"""Fixtures shared by every test directory."""

from __future__ import annotations

import pytest

from tests.factories import make_job


@pytest.fixture
def job_factory():
    return make_job
