"""The retention check's pieces: reading the sets, comparing before and after, the threshold,
the model card, and (in-process, no Ray) a LoRA worker measuring its base with the adapter
disabled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_operator import api
from finetune_trainer import retention
from finetune_trainer.data import prepare_records
from finetune_trainer.errors import DataError
from finetune_trainer.model_card import model_card
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob
from tests.in_process import worker_without_ray
from tests.records import arithmetic_records

BEFORE = {"general": {"loss": 0.70, "perplexity": 2.01}, "code": {"loss": 1.50, "perplexity": 4.5}}
AFTER = {"general": {"loss": 2.84, "perplexity": 17.1}, "code": {"loss": 1.45, "perplexity": 4.3}}


def job_with(evaluation: dict) -> api.FineTuneJob:
    return api.FineTuneJob.model_validate(MakeJob.trainer().spec(evaluation=evaluation).obj())


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("limit", "regressed"),
    [(None, None), (0.5, True), (2.2, False), (2.14, False)],  # 2.14 is the rise itself
)
def test_compare_reports_each_sets_change_and_the_verdict(limit, regressed) -> None:
    metrics = retention.compare(BEFORE, AFTER, limit)
    assert metrics["retention_general_loss_before"] == 0.70
    assert metrics["retention_general_loss_after"] == 2.84
    assert metrics["retention_general_loss_increase"] == pytest.approx(2.14)
    assert metrics["retention_code_loss_increase"] == pytest.approx(-0.05)  # it improved
    assert metrics["retention_general_perplexity_after"] == 17.1
    assert metrics.get("retention_regressed") is regressed
    assert metrics.get("retention_max_loss_increase") == limit


def test_no_retention_sets_give_no_entries_even_with_a_threshold() -> None:
    assert retention.compare({}, {}, 0.5) == {}


def test_results_and_warnings_name_only_the_sets_past_the_threshold() -> None:
    spec = job_with({
        "retention": [{"source": "general.jsonl"}, {"source": "code.jsonl"}],
        "maxRetentionLossIncrease": 0.5,
    }).spec  # fmt: skip
    metrics = retention.compare(BEFORE, AFTER, 0.5)
    results = retention.results(spec, metrics)
    assert [(r.name, r.exceeded) for r in results] == [("general", True), ("code", False)]
    assert results[0].to_wire() == {
        "name": "general", "lossBefore": 0.70, "lossAfter": 2.84,
        "lossIncrease": pytest.approx(2.14), "exceeded": True,
    }  # fmt: skip
    (warning,) = retention.warnings(spec, metrics)
    assert warning.startswith("retention regressed: general loss 0.7000 -> 2.8400 (+2.1400")
    assert "the model was written" in warning


def test_sets_are_read_checked_and_tokenised_with_malformed_lines_counted(job_dir) -> None:
    lines = [json.dumps(r) for r in arithmetic_records(20)]
    lines[3] = "{not json"
    lines[7] = json.dumps({"text": "wrong shape"})
    write_lines(job_dir / "general.jsonl", lines)
    spec = job_with({"retention": [{"source": "general.jsonl"}]}).spec
    (kept,) = retention.read_sets(spec, base_dir=job_dir)
    report = kept.report()
    assert (report["name"], report["records_read"], report["records"]) == ("general", 20, 18)
    assert report["malformed"]["count"] == 2
    assert [bad.split(" ")[0].rsplit(":", 1)[1] for bad in report["malformed"]["first"]] == [
        "4", "8",
    ]  # fmt: skip
    rows, data_report = retention.prepare(spec, base_dir=job_dir, model_dir=job_dir / "model")
    assert len(rows["general"]) >= 1 and data_report["retention"][0]["records"] == 18


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["{bad", "{bad"], "no usable records; first:"),
        ([json.dumps(arithmetic_records(1)[0]), "{bad", "{bad"], "2 of 3 records are malformed"),
    ],
)
def test_an_unusable_set_fails_the_run_naming_the_field(job_dir, lines, problem) -> None:
    write_lines(job_dir / "general.jsonl", lines)
    spec = job_with({"retention": [{"source": "general.jsonl"}]}).spec
    with pytest.raises(DataError, match=r"spec\.evaluation\.retention\[0\]") as raised:
        retention.read_sets(spec, base_dir=job_dir)
    assert problem in str(raised.value)


def test_retention_records_are_not_redacted(job_dir) -> None:
    """Evaluation-only data: the loss is measured on the text the user gave."""
    record = {"messages": [{"role": "user", "content": "Who wrote it?"},
                           {"role": "assistant", "content": "Jane Austen wrote it in Bath."}]}  # fmt: skip
    write_lines(job_dir / "general.jsonl", [json.dumps(record)])
    spec = job_with({"retention": [{"source": "general.jsonl"}]}).spec.model_copy(deep=True)
    spec.dataset.cleaning.redact_pii = True
    (kept,) = retention.read_sets(spec, base_dir=job_dir)
    assert kept.records[0]["messages"][1]["content"] == "Jane Austen wrote it in Bath."


def test_the_model_card_says_plainly_when_no_retention_was_measured() -> None:
    card = model_card(job_with({}), {"eval_loss": 1.0, "outputs_step": 4, "steps": 4}, {})
    assert "## Retention" in card
    assert "No retention was measured" in card
    assert "The outputs hold the weights of step 4: the last one" in card


def test_the_model_card_tabulates_retention_and_warns_past_the_threshold() -> None:
    job = job_with({
        "retention": [{"source": "general.jsonl"}, {"source": "code.jsonl"}],
        "maxRetentionLossIncrease": 0.5,
    })  # fmt: skip
    metrics = retention.compare(BEFORE, AFTER, 0.5) | {"eval_loss": 1.0}
    card = model_card(job, metrics, {})
    assert "| general | 0.7000 | 2.8400 | +2.1400 | **exceeds 0.5** |" in card
    assert "| code | 1.5000 | 1.4500 | -0.0500 | within 0.5 |" in card
    assert "Warning: the retention loss rose past" in card
    assert "retention_general" not in card  # in the retention table, not the metric list


def test_a_lora_workers_base_is_the_model_with_its_adapter_disabled(
    workspace, single_process_group
) -> None:
    """Before training the adapter adds nothing (LoRA's B starts at 0), so the loss then is
    the base model's; after training, measuring with the adapter disabled gives that loss
    back, while the trained model's differs. No second copy of the base is loaded."""
    spec = MakeJob.trainer().spec(
        hyperparameters={"batchSize": 4, "microBatchSize": 2, "maxSteps": 3, "learningRate": 2e-2},
        evaluation={"retention": [{"source": "train.jsonl", "name": "general"}],
                    "maxRetentionLossIncrease": 10.0},
    ).typed_spec()  # fmt: skip
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    kept, _ = retention.prepare(spec, base_dir=workspace, model_dir=workspace / "model")
    data = splits.rows | {"retention": {"general": kept["general"][:8]}}
    worker = worker_without_ray(spec, data, base_dir=workspace, total_steps=3,
                                steps_per_epoch=splits.steps_per_epoch,
                                output_dir=workspace / "out")  # fmt: skip
    worker.measure_retention_before()
    assert worker.state.retention_before is None  # an adapter's base is measured at the end
    untrained = worker._evaluate_rows(data["retention"])["general"]["loss"]
    base_weights = {n: p.detach().clone() for n, p in worker.model.named_parameters()
                    if not p.requires_grad}  # fmt: skip
    parameters = sum(p.numel() for p in worker.model.parameters())
    while worker.steps_left():
        worker.train_step().read()
    worker.close()
    metrics = worker.retention_metrics()
    assert metrics["retention_general_loss_before"] == pytest.approx(untrained, abs=1e-5)
    assert abs(metrics["retention_general_loss_after"] - untrained) > 1e-3
    assert metrics["retention_general_loss_increase"] == pytest.approx(
        metrics["retention_general_loss_after"] - untrained, abs=1e-5
    )
    assert metrics["retention_max_loss_increase"] == 10.0
    # Training moved only the adapter, the base weights are the ones measured, and the
    # model holds no second copy of them.
    for name, weight in worker.model.named_parameters():
        if name in base_weights:
            assert torch.equal(weight, base_weights[name]), name
    assert sum(p.numel() for p in worker.model.parameters()) == parameters
    assert worker.model.active_adapters == ["default"]  # enabled again after the measurement
