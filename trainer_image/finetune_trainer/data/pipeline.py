"""The data stage from sources to split records: read → clean → dedup → split → mix → leakage.

Memory: records stream through reading, cleaning and dedup; what grows with the data
set in the stages themselves is a fixed-size digest per record (dedup, leakage). The
surviving records are kept in lists for the result, because the trainer tokenises all
of them next anyway; the held-out share waits there until train has been fully seen,
which leakage removal needs.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer.data.clean import clean_records
from finetune_trainer.data.dedup import make_deduplicator
from finetune_trainer.data.formats import can_convert, content_text, convert
from finetune_trainer.data.leakage import LeakageIndex
from finetune_trainer.data.readers import DataError, SourceLineage, read_source
from finetune_trainer.data.report import DataReport
from finetune_trainer.data.split import TEST, TRAIN, VALIDATION, split_of

SPLITS = (TRAIN, VALIDATION, TEST)


@dataclass
class PreparedData:
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    format: str
    report: dict


def prepare_records(spec: api.FineTuneJobSpec, *, base_dir: Path | None = None) -> PreparedData:
    """Cleaned, deduplicated, split and mixed records of a job, with their data report."""
    dataset = spec.dataset
    fmt = dataset.train.format
    seed = spec.hyperparameters.seed
    _check_formats(dataset)
    report = DataReport(format=fmt, seed=seed)
    stage = _Stage(dataset.cleaning, report, fmt, base_dir)

    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    validation_fraction = 0.0 if dataset.validation else dataset.validation_split
    test_fraction = 0.0 if dataset.test else dataset.test_split
    for record in stage.records(dataset.train, TRAIN):
        text = content_text(record, fmt)
        splits[split_of(text, seed, validation_fraction, test_fraction)].append(record)
    for name, source in ((VALIDATION, dataset.validation), (TEST, dataset.test)):
        if source is not None:
            splits[name].extend(stage.records(source, name))

    mixed = [
        _draw_mix(stage, index, source, len(splits[TRAIN]), seed)
        for index, source in enumerate(dataset.mix)
    ]
    for drawn in mixed:
        splits[TRAIN] = _interleave(splits[TRAIN], drawn)

    if dataset.cleaning.remove_leakage:
        index = LeakageIndex()
        for record in splits[TRAIN]:
            index.add_train(record, fmt)
        for name in (VALIDATION, TEST):
            kept = [r for r in splits[name] if not index.leaks(r, fmt)]
            report.leakage_removed[name] = len(splits[name]) - len(kept)
            splits[name] = kept

    if not splits[TRAIN]:
        raise DataError(f"{dataset.train.source}: no training records left after cleaning")
    report.counts = {name: len(records) for name, records in splits.items()}
    return PreparedData(**splits, format=fmt, report=report.as_dict())


class _Stage:
    """Reads one source at a time through cleaning and its own deduplication."""

    def __init__(
        self, cleaning: api.CleaningSpec, report: DataReport, fmt: str, base_dir: Path | None
    ) -> None:
        self.cleaning, self.report, self.fmt, self.base_dir = cleaning, report, fmt, base_dir

    def records(self, source: api.DataSource, role: str):  # -> Iterator[dict]
        lineage = SourceLineage(role=role, source=source.source, format=source.format)
        self.report.sources.append(lineage)
        items = read_source(source.source, lineage, split=source.split, base_dir=self.base_dir)
        dedup = make_deduplicator(self.cleaning.dedup, self.cleaning.near_dedup_threshold)
        cleaned = clean_records(
            items, source.format, self.cleaning, self.report, source=source.source
        )
        for record in cleaned:
            if dedup.is_duplicate(content_text(record, source.format)):
                self.report.duplicates_removed += 1
                continue
            yield convert(record, source.format, self.fmt)


def _check_formats(dataset: api.DatasetSpec) -> None:
    target = dataset.train.format
    named = [("validation", dataset.validation), ("test", dataset.test)]
    named += [(f"mix[{i}]", m) for i, m in enumerate(dataset.mix)]
    for name, source in named:
        if source is not None and not can_convert(source.format, target):
            raise DataError(
                f"spec.dataset.{name}.format: {source.format} records cannot be used with "
                f"{target} training data (use the same format, or messages for chat data)"
            )


def _draw_mix(
    stage: _Stage, index: int, source: api.MixSource, train_size: int, seed: int
) -> list[dict]:
    """About weight x train_size records from a replay source, deterministic with the seed.

    Reservoir sampling keeps at most the wanted number of records in memory; a source
    smaller than that is repeated (upsampled) to reach it.
    """
    wanted = round(source.weight * train_size)
    rng = random.Random(f"{seed}:mix:{index}:{source.source}")
    reservoir: list[dict] = []
    available = 0
    for record in stage.records(source, f"mix[{index}]"):
        available += 1
        if len(reservoir) < wanted:
            reservoir.append(record)
        else:
            slot = rng.randrange(available)
            if slot < wanted:
                reservoir[slot] = record
    drawn = list(reservoir)
    if reservoir and len(drawn) < wanted:
        repeats, remainder = divmod(wanted, len(reservoir))
        drawn = reservoir * repeats + rng.sample(reservoir, remainder)
    rng.shuffle(drawn)
    stage.report.mix.append(
        {
            "source": source.source,
            "weight": source.weight,
            "available": available,
            "drawn": len(drawn),
        }
    )
    return drawn


def _interleave(train: list[dict], extra: list[dict]) -> list[dict]:
    """Spread extra records evenly through train (replay data throughout every epoch)."""
    if not extra:
        return train
    keyed = [((i + 0.5) / len(train), 0, r) for i, r in enumerate(train)]
    keyed += [((j + 0.5) / len(extra), 1, r) for j, r in enumerate(extra)]
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [record for _, _, record in keyed]


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    """DIR/train.jsonl, validation.jsonl, test.jsonl and data_report.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        _write_jsonl(out_dir / f"{name}.jsonl", getattr(prepared, name))
    _write_atomic(out_dir / "data_report.json", json.dumps(prepared.report, indent=2) + "\n")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
