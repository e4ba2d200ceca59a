"""Tokenize the prepared splits once (on the Ray cluster's cores when they are large) and
work out how long training runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer.data import PreparedData, build_rows
from finetune_trainer.data.packing import Row
from finetune_trainer.data.pairs import build_pairs
from finetune_trainer.data.tokenize_on_ray import (
    build_pairs_on_ray,
    build_rows_on_ray,
    parallel_workers,
)
from finetune_trainer.errors import NotEnoughData
from finetune_trainer.evaluate import GENERATION_METRICS, generation_samples
from finetune_trainer.model import load_tokenizer
from finetune_trainer.schedule import steps_per_epoch, total_steps

# What the data report says about the training rows (the data stage leaves them empty).
TRAIN_STATS = ("tokens", "loss_tokens", "rows", "padding_ratio", "overlength")


@dataclass
class Splits:
    # train, validation, test rows and generation samples; "retention": rows per set
    rows: dict[str, Any]
    stats: dict[str, Any]  # tokens and padding_ratio for data_report.json
    total_steps: int
    steps_per_epoch: int


def tokenize_splits(prepared: PreparedData, spec: api.FineTuneJobSpec, model_dir: Path) -> Splits:
    tokenizer = load_tokenizer(model_dir, spec.model, spec.dataset.chat_template)
    rows: dict[str, list[Any]] = {}
    stats: dict[str, Any] = {}
    for split in ("train", "validation", "test"):
        records = getattr(prepared, split)
        split_stats: dict[str, Any]
        if not records:
            rows[split], split_stats = [], {}
        elif spec.method.objective == "dpo":  # one row per pair: the batch counts pairs
            rows[split], split_stats = _pairs(records, tokenizer, spec.dataset)
        else:
            rows[split], split_stats = _rows(records, prepared.format, tokenizer, spec.dataset)
        stats[split] = split_stats
    batch = spec.hyperparameters.batch_size
    if len(rows["train"]) < batch:
        raise NotEnoughData(
            f"spec.hyperparameters.batchSize: {batch} sequences (pairs for dpo) per step, but "
            "the training data "
            f"makes only {len(rows['train'])} rows after cleaning and packing; lower batchSize "
            "or add data"
        )
    wanted = set(spec.evaluation.metrics) & set(GENERATION_METRICS)
    limit = spec.evaluation.max_generation_samples
    rows["generation"] = (
        generation_samples(prepared.test, prepared.format, tokenizer, spec.dataset, limit)
        if wanted
        else []
    )
    train_stats = stats["train"]
    hp = spec.hyperparameters
    return Splits(
        rows=rows,
        stats={key: train_stats[key] for key in TRAIN_STATS if key in train_stats}
        | {"tokenized_by_split": stats},
        total_steps=total_steps(
            rows=len(rows["train"]), batch_size=batch, epochs=hp.epochs, max_steps=hp.max_steps
        ),
        steps_per_epoch=steps_per_epoch(len(rows["train"]), batch),
    )


def _rows(
    records: list[Any], fmt: str, tokenizer: Any, dataset: api.DatasetSpec
) -> tuple[list[Row], dict[str, Any]]:
    workers = parallel_workers(len(records))
    if workers is None:
        return build_rows(records, fmt, tokenizer, dataset)
    return build_rows_on_ray(records, fmt, tokenizer, dataset, workers=workers)


def _pairs(
    records: list[Any], tokenizer: Any, dataset: api.DatasetSpec
) -> tuple[list[Row], dict[str, Any]]:
    workers = parallel_workers(len(records))
    if workers is None:
        return build_pairs(records, tokenizer, dataset)
    return build_pairs_on_ray(records, tokenizer, dataset, workers=workers)
