"""method.objective dpo in the API: defaults, and the rules that refuse what cannot train."""

from __future__ import annotations

import pytest
from finetune_operator import api, validation

from tests.factories import MakeJob

PREFERENCE_TRAIN = {"spec.dataset.train": {"source": "s3://data/p.jsonl", "format": "preference"},
                    "spec.method.objective": "dpo"}  # fmt: skip


def problems(changes: dict) -> list[validation.Problem]:
    return validation.validate_object(MakeJob().set_all(changes).obj())


def test_sft_is_the_default_and_dpo_settings_default_to_trls():
    method = MakeJob().typed_spec().method
    assert method.objective == "sft"
    assert (method.dpo.beta, method.dpo.loss_type, method.dpo.label_smoothing) == (
        0.1, "sigmoid", 0.0)  # fmt: skip
    dpo = (
        MakeJob()
        .set_all(
            PREFERENCE_TRAIN
            | {"spec.method.dpo": {"beta": 0.5, "lossType": "robust", "labelSmoothing": 0.1}}
        )
        .typed_spec()
        .method
    )
    assert dpo.objective == "dpo" and dpo.dpo == api.DpoSpec(
        beta=0.5, lossType="robust", labelSmoothing=0.1
    )


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"spec.method.objective": "dpo"}, "spec.method.objective", "preference"),
        (PREFERENCE_TRAIN | {"spec.dataset.validation": {"source": "s3://v.jsonl"}},
         "spec.method.objective", "validation"),
        (PREFERENCE_TRAIN | {"spec.dataset.mix": [
            {"source": "s3://m.jsonl", "format": "messages", "weight": 0.5}]},
         "spec.method.objective", "mix"),
        (PREFERENCE_TRAIN | {"spec.dataset.cleaning": {"overlength": "chunk"}},
         "spec.dataset.cleaning.overlength", "chunks"),
        (PREFERENCE_TRAIN | {"spec.method.dpo": {"labelSmoothing": 0.1}},
         "spec.method.dpo.labelSmoothing", "robust"),
        (PREFERENCE_TRAIN | {"spec.method.type": "full", "spec.deepspeed.zeroStage": 3},
         "spec.method.objective", "ZeRO-3"),
        (PREFERENCE_TRAIN | {"spec.method.dpo": {"beta": 0}}, "spec.method.dpo.beta", ""),
        (PREFERENCE_TRAIN | {"spec.method.dpo": {"lossType": "hinge"}},
         "spec.method.dpo.lossType", ""),
    ],
)  # fmt: skip
def test_what_dpo_cannot_train_is_refused_naming_the_field(changes, field, says):
    found = problems(changes)
    assert field in [p.path for p in found], found
    assert says in " ".join(p.message for p in found if p.path == field)


@pytest.mark.parametrize(
    "changes",
    [
        PREFERENCE_TRAIN,
        PREFERENCE_TRAIN | {"spec.method.type": "full"},
        PREFERENCE_TRAIN | {"spec.method.dpo": {"lossType": "ipo", "beta": 0.5}},
        PREFERENCE_TRAIN | {"spec.dataset.test": {"source": "s3://t.jsonl", "format": "preference"},
                            "spec.dataset.mix": [{"source": "s3://m.jsonl", "format": "preference",
                                                  "weight": 0.5}]},
        # sft keeps training on prompt + chosen of preference records, as before.
        {"spec.dataset.train": {"source": "s3://data/p.jsonl", "format": "preference"}},
    ],
)  # fmt: skip
def test_consistent_dpo_jobs_pass(changes):
    assert problems(changes) == []
