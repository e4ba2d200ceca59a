"""The `sweep` section: what validates, and every mistake reported at its field."""

from __future__ import annotations

import pytest
import yaml
from finetune_operator import api
from finetune_operator.validation import validate_file

from tests.factories import MakeJob

SPACE = {"learningRate": {"logUniform": [1e-5, 1e-3]}, "lora.r": {"choice": [8, 16]}}


def problems(tmp_path, sweep: dict, **spec: dict) -> list[str]:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(MakeJob().spec(sweep=sweep, **spec).obj()))
    return validate_file(manifest)


def test_a_sweep_validates_and_keeps_its_values(tmp_path):
    sweep = {"searchSpace": SPACE | {"lrScheduler": {"choice": ["cosine", "linear"]}},
             "trials": 4, "maxConcurrentTrials": 2}  # fmt: skip
    assert problems(tmp_path, sweep) == []
    parsed = api.SweepSpec.model_validate(sweep)
    assert parsed.search_space["lora.r"].choice == [8, 16]
    assert parsed.metric == "eval_loss" and parsed.mode == "min"
    assert parsed.scheduler.type == "asha"


# (sweep, the path reported, a fragment of the reason)
CASES = [
    ({"searchSpace": {"batchSize": {"choice": [8, 16]}}}, "spec.sweep.searchSpace", "batchSize: not a parameter a sweep can search"),
    ({"searchSpace": {"lora.rank": {"choice": [8]}}}, "spec.sweep.searchSpace", "lora.rank: not a parameter"),
    ({"searchSpace": {"lora.r": {"choice": [0, 8]}}}, "spec.sweep.searchSpace", "lora.r: 0: Input should be greater than or equal to 1"),
    ({"searchSpace": {"learningRate": {"logUniform": [0, 1e-3]}}}, "spec.sweep.searchSpace", "learningRate: logUniform bounds must be > 0"),
    ({"searchSpace": {"warmupRatio": {"uniform": [0.5, 0.1]}}}, "spec.sweep.searchSpace", "low bound 0.5 exceeds 0.1"),
    ({"searchSpace": {"lrScheduler": {"choice": ["cosine", "step"]}}}, "spec.sweep.searchSpace", "lrScheduler: 'step'"),
    ({"searchSpace": {"learningRate": {"uniform": [1e-4, 1e-3], "choice": [1e-4]}}}, "spec.sweep.searchSpace.learningRate", "exactly one of uniform, logUniform or choice"),
    ({"searchSpace": {"learningRate": {"between": [1, 2]}}}, "spec.sweep.searchSpace.learningRate.between", "unknown field"),
    ({"searchSpace": {}}, "spec.sweep.searchSpace", "at least 1"),
    ({"searchSpace": SPACE, "trials": 0}, "spec.sweep.trials", "greater than or equal to 1"),
    ({"searchSpace": SPACE, "metric": "accuracy"}, "spec.sweep.metric", "'eval_loss' or 'eval_perplexity'"),
    ({"searchSpace": SPACE, "mode": "lowest"}, "spec.sweep.mode", "'min' or 'max'"),
    ({"searchSpace": SPACE, "scheduler": {"type": "hyperband"}}, "spec.sweep.scheduler.type", "'asha' or 'none'"),
    ({"searchSpace": SPACE, "scheduler": {"reductionFactor": 1}}, "spec.sweep.scheduler.reductionFactor", "greater than 1"),
    ({"searchSpace": {"dpo.beta": {"choice": [0.1, 0]}}}, "spec.sweep.searchSpace", "dpo.beta: 0: Input should be greater than 0"),
]  # fmt: skip


@pytest.mark.parametrize(("sweep", "path", "reason"), CASES, ids=[c[2] for c in CASES])
def test_a_mistake_is_reported_at_its_field(tmp_path, sweep, path, reason):
    lines = problems(tmp_path, sweep)
    matching = [line for line in lines if f": {path}: " in line]
    assert any(reason in line for line in matching), lines


def test_a_sweep_needs_validation_data(tmp_path):
    lines = problems(tmp_path, {"searchSpace": SPACE}, dataset={"validationSplit": 0})
    assert any(": spec.sweep: " in line and "validation metric" in line for line in lines), lines


def test_lora_parameters_need_a_lora_method(tmp_path):
    lines = problems(tmp_path, {"searchSpace": SPACE}, method={"type": "full"})
    assert any(": spec.sweep.searchSpace: " in line and "lora or qlora" in line
               for line in lines), lines  # fmt: skip


def test_dpo_beta_is_searched_only_for_a_dpo_objective(tmp_path):
    beta = {"dpo.beta": {"logUniform": [0.01, 0.5]}}
    lines = problems(tmp_path, {"searchSpace": beta})
    assert any(": spec.sweep.searchSpace: " in line and "objective dpo" in line
               for line in lines), lines  # fmt: skip
    preference = {"train": {"source": "pairs.jsonl", "format": "preference"},
                  "validationSplit": 0.1}  # fmt: skip
    dpo = {"objective": "dpo", "type": "lora"}
    assert problems(tmp_path, {"searchSpace": beta}, method=dpo, dataset=preference) == []
