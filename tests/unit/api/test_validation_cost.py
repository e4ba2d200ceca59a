"""Parsing a job does each step once: one read, one model validation, one CRD schema."""

from __future__ import annotations

import pytest
from finetune_operator import api, crd, kubeyaml, validation
from finetune_operator.errors import UserError
from finetune_operator.validation import InvalidSpec, load_job_file, parse_job

from tests.factories import REPO, MakeJob

QUICKSTART = REPO / "examples" / "quickstart.yaml"


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[object]:
    """Wrap `owner.name` so that every call is recorded; returns the record."""
    calls: list[object] = []
    original = getattr(owner, name)

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def test_a_job_file_is_read_once_and_validated_once(monkeypatch) -> None:
    reads = count_calls(monkeypatch, kubeyaml, "read_manifest_text")
    validations = count_calls(monkeypatch, api.FineTuneJob, "model_validate")
    job = load_job_file(QUICKSTART)
    assert job.metadata.name
    assert [args[0] for args in reads] == [QUICKSTART]
    assert len(validations) == 1


def test_the_crd_schema_is_built_once_for_every_parse(monkeypatch) -> None:
    validation._crd_schema.cache_clear()
    builds = count_calls(monkeypatch, crd, "openapi_schema")
    try:
        for _ in range(3):
            parse_job(MakeJob().obj())
        assert len(builds) == 1
    finally:
        validation._crd_schema.cache_clear()  # drop the copy the counting wrapper built


def test_an_invalid_spec_is_a_user_error_not_a_value_error() -> None:
    with pytest.raises(InvalidSpec) as raised:
        parse_job({"apiVersion": "finetune.io/v1alpha1", "kind": "FineTuneJob"})
    assert isinstance(raised.value, UserError)
    assert not isinstance(raised.value, ValueError)
