"""`finetune pii-report FILE`: what de-identification would redact, in context, for review.

A privacy officer reads a sample before any training: each finding with its kind, score
and the words around it, then the record as it would be trained on. This is the one
place values are shown; it prints to the reviewer's terminal and writes no file unless
asked (--json), and data_report.json and the model card never hold values.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from finetune_operator import api
from finetune_operator.errors import UserError
from finetune_operator.validation import InvalidSpec, load_job_file

from finetune_trainer.data.formats import FORMATS, MalformedRecord, check_record, map_texts
from finetune_trainer.data.pii import Redactor

CONTEXT_CHARS = 40


@dataclass(frozen=True)
class AuditSettings:
    fmt: str
    pii: api.PiiSpec
    sample: int
    seed: int


def pii_report_command(
    file: Path, *, job: Path | None, fmt: str | None, sample: int, seed: int, as_json: bool
) -> int:
    """Print the review of a sample of FILE's records; 0 on success, 1 on a user error."""
    try:
        settings = _settings(job, fmt, sample, seed)
        review = audit_file(file, settings)
    except InvalidSpec as error:
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if as_json:
        json.dump(review, sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print_review(review, sys.stdout)
    return 0


def _settings(job: Path | None, fmt: str | None, sample: int, seed: int) -> AuditSettings:
    if sample < 1:
        raise UserError(f"--sample: must be at least 1, got {sample}")
    if job is None:
        return AuditSettings(fmt or "messages", api.PiiSpec(), sample, seed)
    spec = load_job_file(job).spec
    return AuditSettings(fmt or spec.dataset.train.format, spec.dataset.cleaning.pii, sample, seed)


def audit_file(path: Path, settings: AuditSettings) -> dict[str, Any]:
    """Findings with context for a reproducible random sample of the file's records."""
    if settings.fmt not in FORMATS:
        raise UserError(f"--format: one of {', '.join(FORMATS)}, got {settings.fmt}")
    records = _sample(path, settings)
    redactor = Redactor(settings.pii)
    totals: Counter[str] = Counter()
    reviewed = []
    for line, record in records:
        found = redactor.find_in_record(record, settings.fmt)
        findings = []
        for text, spans in found.items():
            for finding in spans:
                totals[finding.kind] += 1
                findings.append(
                    {
                        "kind": finding.kind,
                        "score": round(finding.score, 2),
                        "value": text[finding.start : finding.end],
                        "context": _context(text, finding.start, finding.end),
                    }
                )
        redacted, _ = redactor.redact_record(record, settings.fmt)
        reviewed.append({"line": line, "findings": findings, "redacted": redacted})
    return {
        "file": str(path),
        "format": settings.fmt,
        "mode": settings.pii.mode,
        "entities": list(settings.pii.entities),
        "score_threshold": settings.pii.score_threshold,
        "allow_list": list(settings.pii.allow_list),
        "records_reviewed": len(reviewed),
        "findings_by_kind": dict(sorted(totals.items())),
        "records": reviewed,
    }


def _sample(path: Path, settings: AuditSettings) -> list[tuple[int, dict[str, Any]]]:
    """Reservoir sample of (line number, record): any file size, the same lines per seed."""
    rng = random.Random(settings.seed)
    chosen: list[tuple[int, dict[str, Any]]] = []
    seen = 0
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                record = _parse(line, settings.fmt)
                if record is None:
                    continue
                seen += 1
                if len(chosen) < settings.sample:
                    chosen.append((number, record))
                elif (slot := rng.randrange(seen)) < settings.sample:
                    chosen[slot] = (number, record)
    except OSError as error:
        raise UserError(f"{path}: {error.strerror or error}") from error
    except UnicodeDecodeError as error:
        raise UserError(f"{path}: not UTF-8 text ({error.reason})") from error
    if not chosen:
        raise UserError(f"{path}: no valid {settings.fmt} records")
    return sorted(chosen)


def _parse(line: str, fmt: str) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        return check_record(json.loads(line), fmt)
    except (json.JSONDecodeError, MalformedRecord):
        return None  # `finetune prepare` reports malformed lines; the review skips them


def _context(text: str, start: int, end: int) -> str:
    before = text[max(0, start - CONTEXT_CHARS) : start]
    after = text[end : end + CONTEXT_CHARS]
    return " ".join(f"{before}[[{text[start:end]}]]{after}".split())


def print_review(review: dict[str, Any], out: TextIO) -> None:
    """The review for a terminal: findings in context, then the record as trained on."""
    print(
        f"{review['file']}: {review['records_reviewed']} records reviewed ({review['format']}, "
        f"{review['mode']} mode, threshold {review['score_threshold']})",
        file=out,
    )
    for item in review["records"]:
        print(f"\nline {item['line']}: {len(item['findings'])} findings", file=out)
        for finding in item["findings"]:
            print(f"  {finding['kind']:<22} {finding['score']:.2f}  {finding['context']}", file=out)
        map_texts(item["redacted"], review["format"], lambda text: _print_text(text, out))
    kinds = ", ".join(f"{k} {v}" for k, v in review["findings_by_kind"].items()) or "none"
    print(f"\nfindings by kind: {kinds}", file=out)


def _print_text(text: str, out: TextIO) -> str:
    print("  > " + text.replace("\n", "\n  > "), file=out)
    return text
