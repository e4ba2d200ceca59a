"""`finetune prepare JOB.yaml --output DIR`: the data stage alone, with a short summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from finetune_operator import api
from finetune_operator.errors import UserError
from finetune_operator.validation import InvalidSpec, load_job_file

from finetune_trainer import storage
from finetune_trainer.data.engines import workers_from_env
from finetune_trainer.data.packing import token_stats
from finetune_trainer.data.pairs import build_pairs
from finetune_trainer.data.pipeline import stream_prepared, write_report
from finetune_trainer.data.report import summary_lines
from finetune_trainer.errors import DataError, ModelSourceError
from finetune_trainer.model import load_tokenizer
from finetune_trainer.overlap import check_output_clear_of_sources


def prepare_command(job_path: Path, output_dir: Path) -> int:
    """Run the data stage of a job file; 0 on success, 1 with a one-line error otherwise."""
    try:
        report = _prepare(job_path, output_dir)
    except InvalidSpec as error:
        for problem in error.problems:  # each already reads "FILE: spec.path: reason"
            _fail(str(problem))
        return 1
    except UserError as error:
        return _fail(str(error))
    for line in summary_lines(report):
        print(line)
    print(f"wrote {output_dir}/{{train,validation,test}}.jsonl and data_report.json")
    return 0


def _prepare(job_path: Path, output_dir: Path) -> dict[str, Any]:
    base_dir = job_path.parent.resolve()
    job = load_job_file(job_path)
    # --output is the user's own path, relative to where they are, not to the job file.
    check_output_clear_of_sources(
        str(output_dir.resolve()), job.spec, base_dir=base_dir, what="--output"
    )
    # On Ray Data like `finetune run` (joining RAY_ADDRESS's cluster, else starting a local
    # instance), unless FINETUNE_DATA_WORKERS=0 keeps it in this process.
    workers = workers_from_env(redact=job.spec.dataset.cleaning.redact_pii)
    report = stream_prepared(job.spec, output_dir, base_dir=base_dir, workers=workers)
    tokenizer, note = tokenizer_for_stats(job.spec, base_dir=base_dir)
    add_token_stats(report, output_dir / "train.jsonl", tokenizer, job.spec.dataset, note,
                    pairs=job.spec.method.objective == "dpo")  # fmt: skip
    write_report(report, output_dir)
    return report


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def tokenizer_for_stats(
    spec: api.FineTuneJobSpec, *, base_dir: Path | None
) -> tuple[Any, str | None]:
    """The model's tokenizer if it can be loaded without downloading weights; else a reason.

    The statistics are a preview, so a tokenizer that will not load is a note, not a failure.
    """
    model = spec.model
    location = storage.parse_uri(model.source)
    if location.scheme == "s3":
        return None, "prepare does not fetch s3:// models to load their tokenizer"
    where: Path | str
    if location.scheme == "hf":
        where, revision = location.bucket, model.revision
    else:
        where, revision = storage.resolve_local(model.source, base_dir=base_dir), None
        if not where.is_dir():
            return None, f"model directory {where} not found"
    try:
        return load_tokenizer(where, model, spec.dataset.chat_template, revision=revision), None
    except ModelSourceError as error:
        return None, str(error)


def add_token_stats(
    report: dict[str, Any],
    train_file: Path,
    tokenizer: Any,
    dataset: api.DatasetSpec,
    note: str | None,
    *,
    pairs: bool = False,
) -> None:
    """Fill tokens, padding_ratio and overlength in the report from the training records
    (as DPO's pair rows when `pairs`)."""
    if tokenizer is None:
        report["tokenizer_note"] = note
        return
    with open(train_file, encoding="utf-8") as lines:
        records = (json.loads(line) for line in lines)
        try:
            if pairs:
                stats = build_pairs(list(records), tokenizer, dataset)[1]
            else:
                stats = token_stats(records, report["format"], tokenizer, dataset)
        except DataError as error:
            report["tokenizer_note"] = str(error)
            return
    report.update(
        tokens=stats["tokens"],
        loss_tokens=stats["loss_tokens"],
        rows=stats["rows"],
        padding_ratio=stats["padding_ratio"],
        overlength=stats["overlength"],
        tokenizer_note=None,
    )
