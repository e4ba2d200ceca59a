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
from finetune_trainer.data.packing import token_stats
from finetune_trainer.data.pipeline import stream_prepared, write_report
from finetune_trainer.data.report import summary_lines
from finetune_trainer.errors import DataError


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
    report = stream_prepared(job.spec, output_dir, base_dir=base_dir)
    tokenizer, note = load_tokenizer(job.spec.model, base_dir=base_dir)
    add_token_stats(report, output_dir / "train.jsonl", tokenizer, job.spec.dataset, note)
    write_report(report, output_dir)
    return report


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def load_tokenizer(model: api.ModelSpec, *, base_dir: Path | None) -> tuple[Any, str | None]:
    """The model's tokenizer if it can be loaded without downloading weights; else a reason."""
    location = storage.parse_uri(model.source)
    if location.scheme == "s3":
        return None, "prepare does not fetch s3:// models to load their tokenizer"
    if location.scheme == "hf":
        name, options = location.bucket, {"revision": model.revision}
    else:
        path = storage.resolve_local(model.source, base_dir=base_dir)
        if not path.is_dir():
            return None, f"model directory {path} not found"
        name, options = str(path), {}
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            name, trust_remote_code=model.trust_remote_code, **options
        )
    except (OSError, ValueError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        return None, f"cannot load the tokenizer of {model.source}: {first_line}"
    return tokenizer, None


def add_token_stats(
    report: dict[str, Any],
    train_file: Path,
    tokenizer: Any,
    dataset: api.DatasetSpec,
    note: str | None,
) -> None:
    """Fill tokens, padding_ratio and overlength in the report from the training records."""
    if tokenizer is None:
        report["tokenizer_note"] = note
        return
    with open(train_file, encoding="utf-8") as lines:
        records = (json.loads(line) for line in lines)
        try:
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
