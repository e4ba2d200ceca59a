"""The run's report files: history, metrics, loss plot and model card; and their upload."""

from __future__ import annotations

import json
import math

import pytest
from finetune_trainer import history, reports, upload
from finetune_trainer.model_card import model_card

from tests.factories import MakeJob


def rows(steps, **extra):
    return [{"step": s, "loss": 5.0 - s * 0.1, "learning_rate": 1e-3, **extra} for s in steps]


def test_history_appends_and_a_resume_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / history.HISTORY
    history.append_history(path, rows(range(1, 6)))
    history.truncate_history(path, after_step=3)  # resumed from the checkpoint at step 3
    history.append_history(path, rows(range(4, 8)))
    steps = [row["step"] for row in history.read_history(path)]
    assert steps == [1, 2, 3, 4, 5, 6, 7]
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_a_resumed_attempt_restores_the_rows_a_killed_driver_never_wrote(tmp_path):
    log = history.HistoryLog(tmp_path / history.HISTORY)
    log.resumed(-1)
    assert [r["step"] for r in log.append(rows(range(0, 3)))] == [0, 1, 2]
    # The driver died after the checkpoint at step 4 was saved, before rows 3 and 4 were
    # written; the next run resumes at 4 and its checkpoint's rows (2, 3, 4) come again.
    again = history.HistoryLog(log.path)
    again.resumed(4)
    assert [r["step"] for r in again.append(rows(range(2, 5)))] == [3, 4]
    again.append(rows(range(5, 7)))
    steps = [row["step"] for row in history.read_history(log.path)]
    assert steps == [0, 1, 2, 3, 4, 5, 6]


def test_truncating_a_missing_history_starts_an_empty_one(tmp_path):
    path = tmp_path / history.HISTORY
    history.truncate_history(path, after_step=0)
    assert history.read_history(path) == []


def test_metrics_are_sorted_json_without_non_finite_values(tmp_path):
    path = tmp_path / reports.METRICS
    reports.write_metrics(path, {"train_loss": 1.5, "eval_loss": math.nan, "steps": 4})
    written = json.loads(path.read_text())
    assert written == {"steps": 4, "train_loss": 1.5}


def test_loss_plot_is_a_png(tmp_path):
    path = tmp_path / reports.LOSS_PLOT
    logged = rows(range(1, 5))
    logged[1]["eval_loss"] = 4.0
    reports.plot_loss(logged, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_throughput_summarises_the_logged_steps():
    logged = [{"step": 0, "eval_loss": 6.0}, *rows([1, 2], tokens_per_second=100.0)]
    logged[2]["tokens_per_second"] = 300.0
    assert reports.throughput(logged) == {"tokens_per_second": 200.0, "baseline_eval_loss": 6.0}
    on_gpu = rows([1, 2], tokens_per_second=10.0, mfu=0.25, peak_memory_gib=3.0)
    on_gpu[1] |= {"mfu": 0.35, "peak_memory_gib": 5.0}
    summary = reports.throughput(on_gpu)
    assert math.isclose(summary["mfu"], 0.3) and summary["peak_memory_gib"] == 5.0
    assert summary["mfu_formula"] == reports.MFU_FORMULA


def test_model_card_names_base_data_hyperparameters_and_metrics():
    job = MakeJob.trainer().spec(hyperparameters={"learningRate": 3e-4, "batchSize": 8}).typed()
    report = {"records_read": 160, "train": 136, "validation": 16, "test": 8, "tokens": 4321}
    card = model_card(job, {"train_loss": 1.23456, "eval_loss": 1.5}, report)
    assert card.startswith("# tiny\n")
    assert "`model`" in card and "lora" in card
    assert "`train.jsonl`" in card
    assert "| records_read | 160 |" in card and "| tokens | 4321 |" in card
    assert "| learning rate | 0.0003 |" in card and "| batch size (global) | 8 |" in card
    assert "r=8, alpha=16.0" in card
    assert "| train_loss | 1.235 |" in card and "| eval_loss | 1.5 |" in card
    assert "PeftModel.from_pretrained" in card


def test_model_card_of_a_full_fine_tune_points_at_model():
    job = MakeJob.trainer().spec(method={"type": "full"}).typed()
    card = model_card(job, {}, {})
    assert "AutoModelForCausalLM.from_pretrained('model')" in card
    assert "PeftModel" not in card and "LoRA" not in card


def test_upload_copies_the_whole_tree_to_the_destination(tmp_path):
    """fsspec's in-memory filesystem stands in for s3:// (same put_file calls)."""
    import fsspec

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    (tmp_path / "metrics.json").write_text('{"eval_loss": 1.0}')
    upload.upload_dir(tmp_path, "memory://bucket/runs/one")
    filesystem = fsspec.filesystem("memory")
    assert filesystem.cat_file("/bucket/runs/one/metrics.json") == b'{"eval_loss": 1.0}'
    assert filesystem.exists("/bucket/runs/one/adapter/adapter_config.json")


def test_mfu_counts_frozen_weights_at_4n_and_trained_ones_at_6n():
    n = 1_000_000_000
    assert reports.model_flops_per_token(trainable=n, total=n) == 6 * n
    lora = reports.model_flops_per_token(trainable=n // 100, total=n + n // 100)
    assert lora == 6 * (n // 100) + 4 * n
    # 1000 tokens/s on a device of 1e13 FLOP/s peak: a full fine-tune uses 60 %, LoRA on
    # the same base ~40 %: the old 6N formula overstated LoRA's MFU by about 1.5x.
    full = reports.mfu(1000, trainable=n, total=n, peak_flops=1e13)
    adapted = reports.mfu(1000, trainable=n // 100, total=n + n // 100, peak_flops=1e13)
    assert full == pytest.approx(0.6)
    assert adapted == pytest.approx(0.406)
    assert 1.45 < 6 * (n + n // 100) * 1000 / 1e13 / adapted < 1.5
