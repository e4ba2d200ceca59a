"""The generated CRD schema alone (what admission checks) and its CEL rules (cel-python)."""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml
from finetune_operator import api, validation
from finetune_operator.crd import openapi_schema

from tests.factories import EXAMPLES, MakeJob


@pytest.fixture(scope="module")
def admission():
    return validation._admission_validator()


def admitted(job: dict) -> dict:
    """The object after the API server's defaulting, as CEL sees it."""
    return validation._as_admitted(api.FineTuneJob.model_validate(job))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_schema_accepts_every_example(admission, example):
    admission.validate(yaml.safe_load(example.read_text()))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_cel_rules_accept_every_example(example):
    job = api.FineTuneJob.model_validate(yaml.safe_load(example.read_text()))
    assert validation.cel_problems(validation._as_admitted(job)) == []


SCHEMA_REJECTS = [
    ("spec.method.type", "dora"),
    ("spec.hyperparameters.learningRate", 0),
    ("spec.hyperparameters.learningRate", 1.5),
    ("spec.resources.workers", 0),
    ("spec.resources.memoryPerWorker", "64 GB"),
    ("spec.deepspeed.zeroStage", 4),
    ("spec.dataset.validationSplit", 1),
    ("spec.dataset.maxSeqLength", 8),
    ("spec.model.source", "ftp://x/y"),
    ("spec.output.destination", "hf://org/name"),
    ("spec.hyperparameters.batchSize", "32"),
    ("spec.unknownField", True),
]


@pytest.mark.parametrize(("path", "value"), SCHEMA_REJECTS)
def test_schema_rejects_what_it_can_express(admission, path, value):
    job = MakeJob().set(path, value).obj()
    errors = list(admission.iter_errors(job))
    assert errors, f"the CRD schema accepted {path}={value!r}"


def test_schema_and_models_agree_on_nullable_fields(admission):
    job = (
        MakeJob()
        .set_all({"spec.hyperparameters.maxSteps": None, "spec.dataset.validation": None})
        .obj()
    )
    admission.validate(job)
    assert validation.validate_object(job) == []


# --------------------------------------------------------------------------- CEL


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"spec.dataset.validationSplit": 0.5, "spec.dataset.testSplit": 0.5}, "spec.dataset.testSplit"),
        ({"spec.method.type": "qlora", "spec.resources.gpusPerWorker": 0}, "spec.method.type"),
        ({"spec.method.type": "full", "spec.output.mergeAdapter": True}, "spec.output.mergeAdapter"),
        ({"spec.evaluation.earlyStopping": {}, "spec.dataset.validationSplit": 0.0}, "spec.evaluation.earlyStopping"),
        ({"spec.evaluation.metrics": ["rouge"]}, "spec.evaluation.metrics"),
        ({"spec.resources.workers": 2, "spec.resources.gpusPerWorker": 4, "spec.hyperparameters.batchSize": 4}, "spec.hyperparameters.batchSize"),
        ({"spec.hyperparameters.batchSize": 4, "spec.hyperparameters.microBatchSize": 8}, "spec.hyperparameters.microBatchSize"),
        ({"spec.deepspeed.offloadParams": True}, "spec.deepspeed.offloadParams"),
        ({"spec.deepspeed.zeroStage": 0, "spec.deepspeed.offloadOptimizer": True}, "spec.deepspeed.offloadOptimizer"),
        ({"metadata.name": "x" * 48}, "metadata.name"),
        ({"metadata.name": "has.dots"}, "metadata.name"),
    ],
)  # fmt: skip
def test_each_cel_rule_fires_at_its_field(changes, field):
    problems = validation.cel_problems(admitted(MakeJob().set_all(changes).obj()))
    assert [p.path for p in problems] == [field], problems


@pytest.mark.parametrize(
    "changes",
    [
        {"spec.dataset.validationSplit": 0.5, "spec.dataset.testSplit": 0.49},
        {"spec.method.type": "qlora", "spec.resources.gpusPerWorker": 1},
        {"spec.evaluation.earlyStopping": {}, "spec.dataset.validation": {"source": "s3://data/v.jsonl"}, "spec.dataset.validationSplit": 0.0},
        {"spec.evaluation.metrics": ["bleu"], "spec.dataset.test": {"source": "s3://data/t.jsonl"}},
        {"spec.evaluation.metrics": ["bleu"], "spec.dataset.testSplit": 0.1},
        {"spec.resources.workers": 2, "spec.resources.gpusPerWorker": 0, "spec.hyperparameters.batchSize": 2},
        {"spec.hyperparameters.microBatchSize": None},
        {"spec.deepspeed.zeroStage": 3, "spec.deepspeed.offloadParams": True},
        {"metadata.name": "x" * 47},
    ],
)  # fmt: skip
def test_cel_rules_let_consistent_specs_through(changes):
    assert validation.cel_problems(admitted(MakeJob().set_all(changes).obj())) == []


def test_integer_written_for_a_number_field_is_a_double_in_cel():
    # `testSplit: 0` arrives as an int; the API server types it as a double, so must we.
    job = admitted(MakeJob().set("spec.dataset.validationSplit", 0.2).obj())
    job["spec"]["dataset"]["testSplit"] = 0
    assert validation.cel_problems(job) == []


def running(job: dict, phase: str = "Running") -> dict:
    job = admitted(job)
    job["status"] = {"phase": phase}
    return job


@pytest.mark.parametrize(
    ("old_phase", "path", "value", "refused"),
    [
        ("Running", "spec.hyperparameters.learningRate", 1e-3, True),
        ("Initializing", "spec.model.source", "hf://org/other", True),
        ("Running", "spec.resources.workers", 8, True),
        ("Running", "spec.runPolicy.suspend", True, False),
        ("Running", "spec.runPolicy.ttlSecondsAfterFinished", 60, False),
        ("Suspended", "spec.hyperparameters.learningRate", 1e-3, False),
        ("Succeeded", "spec.resources.workers", 8, False),
        (None, "spec.resources.workers", 8, False),
    ],
)
def test_spec_is_frozen_while_running_except_run_policy(old_phase, path, value, refused):
    old = running(MakeJob().obj(), old_phase) if old_phase else admitted(MakeJob().obj())
    new = copy.deepcopy(old)
    *parents, leaf = path.split(".")
    node = new
    for key in parents:
        node = node[key]
    node[leaf] = value
    problems = validation.cel_problems(new, old)
    assert bool(problems) is refused, problems
    if refused:
        assert problems[0].path == "spec" and "suspend the job first" in problems[0].message


def test_transition_rule_lists_every_frozen_section():
    rule = api.ROOT_VALIDATIONS[-1]["rule"]
    for section in api.FROZEN_WHILE_RUNNING:
        assert f"oldSelf.spec.{section} == self.spec.{section}" in rule
    assert "runPolicy" not in rule


def test_rules_compile_as_kubernetes_cel_would_see_them():
    # Every rule compiles; a typo would otherwise only surface at `kubectl apply` of the CRD.
    def rules(node):
        yield from (r["rule"] for r in node.get("x-kubernetes-validations", []))
        for child in node.get("properties", {}).values():
            yield from rules(child)

    compiled = [validation._program(rule) for rule in rules(openapi_schema())]
    assert len(compiled) >= 10


def test_jsonschema_draft4_understands_the_schema():
    jsonschema.Draft4Validator.check_schema(validation._strict(openapi_schema()))
