"""The cleaning stage: raw items in, checked, normalised, redacted records out.

Every item read is accounted for in the report: malformed (with file and line), too
short, or passed on. Deduplication and splitting happen after this, in the pipeline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from finetune_operator import api

from finetune_trainer.data.formats import MalformedRecord, check_record, map_texts, visible_length
from finetune_trainer.data.normalize import normalize_text
from finetune_trainer.data.pii import Redactor
from finetune_trainer.data.readers import RawRecord
from finetune_trainer.data.report import DataReport
from finetune_trainer.errors import DataError


def clean_records(
    items: Iterable[RawRecord],
    fmt: str,
    cleaning: api.CleaningSpec,
    report: DataReport,
    *,
    source: str,
) -> Iterator[tuple[dict[str, Any], Counter[str]]]:
    """Checked and cleaned records of one source, each with its PII redactions by kind;
    fails when too many of its items are bad."""
    redactor = Redactor(cleaning.pii) if cleaning.redact_pii else None
    read = malformed = 0
    first_bad: list[str] = []
    for item in items:
        read += 1
        report.records_read += 1
        try:
            if item.error:
                raise MalformedRecord(item.error)
            record = check_record(item.value, fmt)
        except MalformedRecord as error:
            malformed += 1
            report.add_malformed(item.origin, item.line, str(error))
            if len(first_bad) < 5:
                first_bad.append(f"{item.origin}:{item.line} ({error})")
            continue
        record = map_texts(record, fmt, normalize_text)
        redactions: Counter[str] = Counter()
        if redactor is not None:
            record, redactions = redactor.redact_record(record, fmt)
        if visible_length(record, fmt) < max(cleaning.min_chars, 1):
            report.too_short_removed += 1
            continue
        yield record, redactions
    if read == 0:
        raise DataError(f"{source}: no records")
    if malformed / read > cleaning.max_malformed_fraction:
        raise DataError(
            f"{source}: {malformed} of {read} records are malformed ({malformed / read:.0%}, "
            f"more than spec.dataset.cleaning.maxMalformedFraction="
            f"{cleaning.max_malformed_fraction}); first: {'; '.join(first_bad)}"
        )
