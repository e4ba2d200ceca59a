"""The cleaning stage: raw items in, checked, normalised, redacted records out.

Two halves, so that the expensive one can run anywhere: `clean_item` judges and redacts
one item on its own (in this process, or on a Ray Data worker), and `account` counts
what became of every item, in order, on the driver: malformed (with file and line), too
short, or passed on. Deduplication and splitting happen after this, in the pipeline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from finetune_operator import api

from finetune_trainer.data.formats import MalformedRecord, check_record, map_texts, visible_length
from finetune_trainer.data.normalize import normalize_text
from finetune_trainer.data.readers import RawRecord
from finetune_trainer.data.report import DataReport
from finetune_trainer.errors import DataError

if TYPE_CHECKING:  # Presidio and spaCy take seconds to import: only a redacting job loads them
    from finetune_trainer.data.pii import Redactor

FIRST_MALFORMED_LISTED = 5  # bad records an error names, as file:line (reason)


@dataclass
class Cleaned:
    """What cleaning made of one raw item: a record with its redactions, or why it went."""

    origin: str
    line: int
    record: dict[str, Any] | None = None
    redactions: Counter[str] = field(default_factory=Counter)
    malformed: str | None = None  # why the item is not a record of its format
    too_short: bool = False


def make_redactor(cleaning: api.CleaningSpec) -> Redactor | None:
    """The job's redactor (loads the NER model: build one per process and reuse it)."""
    if not cleaning.redact_pii:
        return None
    from finetune_trainer.data.pii import Redactor

    return Redactor(cleaning.pii)


def clean_item(
    item: RawRecord, fmt: str, cleaning: api.CleaningSpec, redactor: Redactor | None
) -> Cleaned:
    """Check, normalise and redact one item; depends on nothing but the item and settings."""
    try:
        if item.error:
            raise MalformedRecord(item.error)
        record = check_record(item.value, fmt)
    except MalformedRecord as error:
        return Cleaned(item.origin, item.line, malformed=str(error))
    record = map_texts(record, fmt, normalize_text)
    redactions: Counter[str] = Counter()
    if redactor is not None:
        record, redactions = redactor.redact_record(record, fmt)
    if visible_length(record, fmt) < max(cleaning.min_chars, 1):
        return Cleaned(item.origin, item.line, too_short=True)
    return Cleaned(item.origin, item.line, record, redactions)


def clean_records(
    items: Iterable[RawRecord],
    fmt: str,
    cleaning: api.CleaningSpec,
    report: DataReport,
    *,
    source: str,
) -> Iterator[tuple[dict[str, Any], Counter[str]]]:
    """Checked and cleaned records of one source, in this process (see `account`)."""
    redactor = make_redactor(cleaning)
    cleaned = (clean_item(item, fmt, cleaning, redactor) for item in items)
    return account(cleaned, cleaning, report, source=source)


def account(
    cleaned: Iterable[Cleaned], cleaning: api.CleaningSpec, report: DataReport, *, source: str
) -> Iterator[tuple[dict[str, Any], Counter[str]]]:
    """The kept records of one source, each with its PII redactions by kind, counting the
    rest in the report; fails when too many of its items are bad."""
    read = malformed = 0
    first_bad: list[str] = []
    for item in cleaned:
        read += 1
        report.records_read += 1
        if item.malformed is not None:
            malformed += 1
            report.add_malformed(item.origin, item.line, item.malformed)
            if len(first_bad) < FIRST_MALFORMED_LISTED:
                first_bad.append(f"{item.origin}:{item.line} ({item.malformed})")
            continue
        if item.too_short or item.record is None:
            report.too_short_removed += 1
            continue
        yield item.record, item.redactions
    if read == 0:
        raise DataError(f"{source}: no records")
    check_malformed_share(source, malformed, read, first_bad, cleaning)


def check_malformed_share(
    label: str, malformed: int, read: int, first_bad: list[str], cleaning: api.CleaningSpec
) -> None:
    """DataError naming `label` and its first bad records when more of the `read` records
    are malformed than spec.dataset.cleaning.maxMalformedFraction allows."""
    if malformed / read > cleaning.max_malformed_fraction:
        raise DataError(
            f"{label}: {malformed} of {read} records are malformed ({malformed / read:.0%}, "
            f"more than spec.dataset.cleaning.maxMalformedFraction="
            f"{cleaning.max_malformed_fraction}); first: {'; '.join(first_bad)}"
        )
