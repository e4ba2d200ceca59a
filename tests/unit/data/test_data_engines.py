"""Which engine cleans the records, chosen by FINETUNE_DATA_WORKERS, and in what order."""

from __future__ import annotations

import pytest
from finetune_operator.errors import UserError
from finetune_trainer.data.engines import InDriver, make_engine, workers_from_env
from finetune_trainer.data.pipeline import sources_in_read_order

from tests.factories import MakeJob


@pytest.fixture
def ray_down():
    """No Ray instance left by an earlier test in this process, so that one running after
    the call can only have been started by it."""
    import ray

    ray.shutdown()
    return ray


def test_zero_workers_keeps_the_stage_in_the_driver_without_starting_ray(monkeypatch, ray_down):
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "0")
    assert workers_from_env() is None and not ray_down.is_initialized()
    spec = MakeJob.data_stage().typed_spec()
    assert isinstance(make_engine([], spec.dataset.cleaning, None, workers=None), InDriver)
    assert not ray_down.is_initialized()


def test_unset_and_without_redaction_the_driver_cleans_without_starting_ray(monkeypatch, ray_down):
    monkeypatch.delenv("FINETUNE_DATA_WORKERS")
    assert workers_from_env(redact=False) is None and not ray_down.is_initialized()


@pytest.mark.parametrize("value", ["two", "-1", "1.5"])
def test_a_bad_worker_count_is_refused_naming_the_variable(monkeypatch, value):
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", value)
    with pytest.raises(UserError, match=rf"^FINETUNE_DATA_WORKERS='{value}': expected"):
        workers_from_env()


def test_sources_are_read_train_first_then_validation_test_and_mix():
    spec = (
        MakeJob.data_stage()
        .spec(
            dataset={
                "test": {"source": "test.jsonl"},
                "mix": [{"source": "a.jsonl", "weight": 0.1}, {"source": "b.jsonl", "weight": 0.1}],
            }
        )
        .typed_spec()
    )
    order = [(role, source.source) for role, source in sources_in_read_order(spec.dataset)]
    assert order == [
        ("train", "train.jsonl"),
        ("test", "test.jsonl"),
        ("mix[0]", "a.jsonl"),
        ("mix[1]", "b.jsonl"),
    ]
