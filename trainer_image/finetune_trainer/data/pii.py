"""De-identification of whole records: find, then mask or pseudonymize, counted per kind.

A record is treated as one document: a name found in one turn is also replaced where it
recurs in another turn (NER misses many second mentions, "Smith" after "John Smith"), and
in pseudonymize mode the same person gets the same number everywhere in the record, so a
conversation stays coherent: "<PERSON_1> called; I told <PERSON_1> ...". Numbers restart
per record, so no surrogate links records to one another.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from finetune_operator import api

from finetune_trainer.data.formats import map_texts
from finetune_trainer.data.pii_engine import Finding, PiiFinder, resolve_overlaps

# Kinds whose values recur as plain words in later turns and are worth looking for again.
RECURRING = ("person", "location", "organization")


def placeholder(kind: str, number: int | None = None) -> str:
    """<PERSON> in mask mode, <PERSON_3> in pseudonymize mode."""
    return f"<{kind.upper()}>" if number is None else f"<{kind.upper()}_{number}>"


class Redactor:
    """Applies a job's `cleaning.pii` settings to records."""

    def __init__(self, settings: api.PiiSpec) -> None:
        self.settings = settings
        self.finder = PiiFinder(settings)

    def redact_record(
        self, record: dict[str, Any], fmt: str
    ) -> tuple[dict[str, Any], Counter[str]]:
        """The record with its personal data replaced, and how many of each kind."""
        found = self.find_in_record(record, fmt)
        surrogates = _Surrogates(numbered=self.settings.mode == "pseudonymize")
        counts: Counter[str] = Counter()

        def replace(text: str) -> str:
            findings = found[text]
            counts.update(f.kind for f in findings)
            return substitute(text, findings, surrogates.label)

        return map_texts(record, fmt, replace), counts

    def find_in_record(self, record: dict[str, Any], fmt: str) -> dict[str, list[Finding]]:
        """The findings in each text of a record, names recurring across turns included."""
        found: dict[str, list[Finding]] = {}

        def find(text: str) -> str:
            if text not in found:
                found[text] = self.finder.find(text)
            return text

        map_texts(record, fmt, find)
        _add_recurrences(found, self.finder.allowed)
        return found

    def redact_text(self, text: str) -> tuple[str, list[Finding]]:
        """One text on its own (the audit's view); mask mode's placeholders."""
        findings = self.finder.find(text)
        return substitute(text, findings, lambda kind, value: placeholder(kind)), findings


def substitute(text: str, findings: list[Finding], label: Callable[[str, str], str]) -> str:
    """text with each finding replaced by label(kind, value); findings do not overlap."""
    parts, position = [], 0
    for finding in findings:
        value = text[finding.start : finding.end]
        parts += [text[position : finding.start], label(finding.kind, value)]
        position = finding.end
    parts.append(text[position:])
    return "".join(parts)


class _Surrogates:
    """Numbered placeholders, one number per distinct value of a kind within one record."""

    def __init__(self, *, numbered: bool) -> None:
        self.numbered = numbered
        self.known: dict[str, list[tuple[frozenset[str], int]]] = {}

    def label(self, kind: str, value: str) -> str:
        if not self.numbered:
            return placeholder(kind)
        words = frozenset(_words(value))
        seen = self.known.setdefault(kind, [])
        for known_words, number in seen:
            # "Smith" and "Mr John Smith" are the same person as "John Smith".
            if words == known_words or (
                kind in RECURRING and words and (words <= known_words or known_words <= words)
            ):
                return placeholder(kind, number)
        number = len(seen) + 1
        seen.append((words, number))
        return placeholder(kind, number)


def _words(value: str) -> list[str]:
    return re.findall(r"\w+", value.casefold())


def _add_recurrences(found: dict[str, list[Finding]], allowed: re.Pattern[str] | None) -> None:
    """Where a name found anywhere in the record recurs undetected, find it there too."""
    values: dict[str, str] = {}
    for text, findings in found.items():
        for finding in findings:
            if finding.kind not in RECURRING:
                continue
            value = text[finding.start : finding.end]
            values.setdefault(value, finding.kind)
            if finding.kind == "person":  # surnames and first names recur alone
                for word in re.findall(r"[A-Z][a-z]{2,}", value):
                    values.setdefault(word, "person")
    values = {v: k for v, k in values.items() if allowed is None or not allowed.fullmatch(v)}
    if not values:
        return
    pattern = re.compile(
        r"(?<!\w)(?:" + "|".join(map(re.escape, sorted(values, key=len, reverse=True))) + r")(?!\w)"
    )
    for text, findings in found.items():
        extra = [
            Finding(values[m.group(0)], m.start(), m.end(), 0.0)
            for m in pattern.finditer(text)
            if not any(f.start <= m.start() < f.end for f in findings)
        ]
        if extra:
            found[text] = resolve_overlaps(findings + extra, text)
