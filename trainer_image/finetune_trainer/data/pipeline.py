"""The data stage from sources to split records: read → clean → dedup → split → mix → leakage.

Where the per-record work (read, check, normalise, redact) runs is the engine's business
(see engines.py): in this process, or on Ray Data across the cluster's CPUs. The global
decisions (dedup, split, mix, leakage) are made here, on the records in source order, so
the result is the same wherever the cleaning ran.

Memory: records stream through every stage; what grows with the data set is a fixed-size
digest per record (dedup, leakage) and, for replay mixing, the records drawn from the
mix source. Where the records end up is the sink's business: `stream_prepared` (used by
`finetune prepare`) writes them to JSONL as they come and holds none; `prepare_records`
returns them in lists, because the trainer tokenises all of them next anyway.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer import storage
from finetune_trainer.data.clean import account
from finetune_trainer.data.dedup import make_deduplicator
from finetune_trainer.data.engines import DEFAULT_BLOCK_RECORDS, Engine, Running, make_engine
from finetune_trainer.data.formats import Record, can_convert, content_text, convert
from finetune_trainer.data.leakage import LeakageIndex
from finetune_trainer.data.readers import SourceLineage
from finetune_trainer.data.report import DataReport
from finetune_trainer.data.sinks import SPLITS, JsonlSink, ListSink
from finetune_trainer.data.split import TEST, TRAIN, VALIDATION, split_of
from finetune_trainer.errors import DataError


@dataclass
class PreparedData:
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    format: str
    report: dict[str, Any]


def prepare_records(
    spec: api.FineTuneJobSpec,
    *,
    base_dir: Path | None = None,
    workers: int | None = None,
    block_records: int = DEFAULT_BLOCK_RECORDS,
) -> PreparedData:
    """Cleaned, deduplicated, split and mixed records of a job, with their data report.

    workers: None cleans in this process; N cleans on Ray Data with N actors (Ray must be
    up). block_records: records per Ray Data block. Neither changes the result."""
    sink = ListSink()
    report = run_data_stage(
        spec, sink, base_dir=base_dir, workers=workers, block_records=block_records
    )
    return PreparedData(**sink.splits, format=report["format"], report=report)


def stream_prepared(
    spec: api.FineTuneJobSpec,
    out_dir: Path,
    *,
    base_dir: Path | None = None,
    workers: int | None = None,
    block_records: int = DEFAULT_BLOCK_RECORDS,
) -> dict[str, Any]:
    """The data stage written straight to DIR/<split>.jsonl, never holding the records.

    Returns the report (not yet written, so that token statistics can be added). The
    readers name their own files in their errors; what is left is writing into out_dir.
    """
    with storage.local_errors(out_dir):
        sink = JsonlSink(out_dir)
        committed = False
        try:
            report = run_data_stage(
                spec, sink, base_dir=base_dir, workers=workers, block_records=block_records
            )
            sink.commit()
            committed = True
        finally:
            if not committed:  # no half-written split files on failure
                sink.abort()
    return report


def run_data_stage(
    spec: api.FineTuneJobSpec,
    sink: ListSink | JsonlSink,
    *,
    base_dir: Path | None = None,
    workers: int | None = None,
    block_records: int = DEFAULT_BLOCK_RECORDS,
) -> dict[str, Any]:
    """Read → clean → dedup → split → mix → leakage, records into sink; returns the report."""
    _check_formats(spec.dataset)
    sources = sources_in_read_order(spec.dataset)
    engine = make_engine(
        sources, spec.dataset.cleaning, base_dir, workers=workers, block_records=block_records
    )
    with Running(engine):
        return _run_stage(spec, sink, engine)


def sources_in_read_order(dataset: api.DatasetSpec) -> list[tuple[str, api.DataSource]]:
    """(role, source) in the order the stage reads them: train, validation, test, mix."""
    named: list[tuple[str, api.DataSource | None]] = [
        (TRAIN, dataset.train),
        (VALIDATION, dataset.validation),
        (TEST, dataset.test),
    ]
    named += [(f"mix[{index}]", source) for index, source in enumerate(dataset.mix)]
    return [(role, source) for role, source in named if source is not None]


def _run_stage(
    spec: api.FineTuneJobSpec, sink: ListSink | JsonlSink, engine: Engine
) -> dict[str, Any]:
    dataset = spec.dataset
    fmt = dataset.train.format
    seed = spec.hyperparameters.seed
    report = DataReport(format=fmt, seed=seed)
    stage = _Stage(dataset.cleaning, report, fmt, engine)
    leakage = LeakageIndex() if dataset.cleaning.remove_leakage else None

    validation_fraction = 0.0 if dataset.validation else dataset.validation_split
    test_fraction = 0.0 if dataset.test else dataset.test_split
    for record, redactions in stage.records(dataset.train, TRAIN):
        split = split_of(content_text(record, fmt), seed, validation_fraction, test_fraction)
        sink.add(split, record)
        report.add_redactions(split, redactions)
        if leakage is not None and split == TRAIN:
            leakage.add_train(record, fmt)
    for name, source in ((VALIDATION, dataset.validation), (TEST, dataset.test)):
        if source is not None:
            for record, redactions in stage.records(source, name):
                sink.add(name, record)
                report.add_redactions(name, redactions)

    train_size = sink.count(TRAIN)
    for index, source in enumerate(dataset.mix):
        drawn_with_redactions = _draw_mix(stage, index, source, train_size, seed)
        drawn = [record for record, _ in drawn_with_redactions]
        for record, redactions in drawn_with_redactions:
            report.add_redactions(TRAIN, redactions)
            if leakage is not None:
                leakage.add_train(record, fmt)
        if drawn:
            total = sink.count(TRAIN)
            sink.rewrite(TRAIN, partial(_interleave, train_size=total, extra=drawn))

    if leakage is not None:
        _remove_leakage(sink, leakage, report, fmt)

    if sink.count(TRAIN) == 0:
        raise DataError(f"{dataset.train.source}: no training records left after cleaning")
    report.counts = {name: sink.count(name) for name in SPLITS}
    return report.as_dict()


def _remove_leakage(
    sink: ListSink | JsonlSink, train: LeakageIndex, report: DataReport, fmt: str
) -> None:
    """Drop validation records seen in train, and test records seen in train or validation
    (a test record also used for early stopping or model selection is no longer held out)."""
    validation = LeakageIndex()

    def kept_validation(records: Iterator[Record]) -> Iterator[Record]:
        for record in records:
            if not train.leaks(record, fmt):
                validation.add_train(record, fmt)
                yield record

    in_validation = 0

    def kept_test(records: Iterator[Record]) -> Iterator[Record]:
        nonlocal in_validation
        for record in records:
            if train.leaks(record, fmt):
                continue
            if validation.leaks(record, fmt):
                in_validation += 1
                continue
            yield record

    for name, transform in ((VALIDATION, kept_validation), (TEST, kept_test)):
        before = sink.count(name)
        sink.rewrite(name, transform)
        report.leakage_removed[name] = before - sink.count(name)
    report.test_in_validation_removed = in_validation


class _Stage:
    """Takes one source at a time, in read order, through cleaning and its own dedup."""

    def __init__(
        self, cleaning: api.CleaningSpec, report: DataReport, fmt: str, engine: Engine
    ) -> None:
        self.cleaning, self.report, self.fmt, self.engine = cleaning, report, fmt, engine
        self.next_index = 0  # sources come in the order of sources_in_read_order

    def records(self, source: api.DataSource, role: str) -> Iterator[tuple[Record, Counter[str]]]:
        lineage = SourceLineage(role=role, source=source.source, format=source.format)
        self.report.sources.append(lineage)
        index, self.next_index = self.next_index, self.next_index + 1
        dedup = make_deduplicator(self.cleaning.dedup, self.cleaning.near_dedup_threshold)
        items = self.engine.cleaned(index, source, lineage)
        cleaned = account(items, self.cleaning, self.report, source=source.source)
        for record, redactions in cleaned:
            if dedup.is_duplicate(content_text(record, source.format)):
                self.report.duplicates_removed += 1
                continue
            yield convert(record, source.format, self.fmt), redactions


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
) -> list[tuple[Record, Counter[str]]]:
    """About weight x train_size records from a replay source, deterministic with the seed.

    Reservoir sampling keeps at most the wanted number of records in memory; a source
    smaller than that is repeated (upsampled) to reach it.
    """
    wanted = round(source.weight * train_size)
    rng = random.Random(f"{seed}:mix:{index}:{source.source}")
    reservoir: list[tuple[Record, Counter[str]]] = []
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


def _interleave(train: Iterator[Record], train_size: int, extra: list[Record]) -> Iterator[Record]:
    """Spread extra records evenly through train (replay data throughout every epoch)."""
    j = 0
    for i, record in enumerate(train):
        while j < len(extra) and (j + 0.5) / len(extra) < (i + 0.5) / max(train_size, 1):
            yield extra[j]
            j += 1
        yield record
    yield from extra[j:]


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    """DIR/train.jsonl, validation.jsonl, test.jsonl and data_report.json."""
    with storage.local_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            _write_jsonl(out_dir / f"{name}.jsonl", getattr(prepared, name))
    write_report(prepared.report, out_dir)


def write_report(report: dict[str, Any], out_dir: Path) -> None:
    with storage.local_errors(out_dir):
        _write_atomic(out_dir / "data_report.json", json.dumps(report, indent=2) + "\n")


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
