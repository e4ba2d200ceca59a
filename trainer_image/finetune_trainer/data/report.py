"""The data report: every count a user needs to trust what the model was trained on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from finetune_trainer.data.files import SKIPPED_LISTED
from finetune_trainer.data.readers import SourceLineage

MALFORMED_EXAMPLES = 20
SKIPPED_SHOWN = 5  # on the console; data_report.json lists up to SKIPPED_LISTED


@dataclass
class MalformedEntry:
    file: str
    line: int
    reason: str


@dataclass
class DataReport:
    format: str
    seed: int
    records_read: int = 0
    malformed: list[MalformedEntry] = field(default_factory=list)
    malformed_count: int = 0
    too_short_removed: int = 0
    duplicates_removed: int = 0
    pii_redactions: Counter[str] = field(default_factory=Counter)
    pii_redactions_by_split: dict[str, Counter[str]] = field(
        default_factory=lambda: {"train": Counter(), "validation": Counter(), "test": Counter()}
    )
    leakage_removed: dict[str, int] = field(default_factory=lambda: {"validation": 0, "test": 0})
    test_in_validation_removed: int = 0  # of leakage_removed["test"]
    mix: list[dict[str, Any]] = field(default_factory=list)
    sources: list[SourceLineage] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"train": 0, "validation": 0, "test": 0})
    tokens: dict[str, Any] | None = None
    tokenizer_note: str | None = None

    def add_malformed(self, file: str, line: int, reason: str) -> None:
        self.malformed_count += 1
        if len(self.malformed) < MALFORMED_EXAMPLES:
            self.malformed.append(MalformedEntry(file, line, reason))

    def add_redactions(self, split: str, redactions: Counter[str]) -> None:
        """Redactions (counts by kind, never values) in a record that went to split."""
        self.pii_redactions.update(redactions)
        self.pii_redactions_by_split[split].update(redactions)

    def as_dict(self) -> dict[str, Any]:
        tokens = self.tokens or {}
        return {
            "format": self.format,
            "seed": self.seed,
            "records_read": self.records_read,
            "malformed": {
                "count": self.malformed_count,
                "first": [vars(m) for m in self.malformed],
            },
            "too_short_removed": self.too_short_removed,
            "duplicates_removed": self.duplicates_removed,
            "pii_redactions": dict(sorted(self.pii_redactions.items())),
            "pii_redactions_by_split": {
                split: dict(sorted(counts.items()))
                for split, counts in self.pii_redactions_by_split.items()
            },
            "leakage_removed": sum(self.leakage_removed.values()),
            "leakage_removed_by_split": dict(self.leakage_removed),
            "leakage_test_in_validation": self.test_in_validation_removed,
            "overlength": tokens.get("overlength", {"truncated": 0, "dropped": 0, "chunked": 0}),
            **self.counts,
            "mix": self.mix,
            "tokens": tokens.get("tokens"),
            "loss_tokens": tokens.get("loss_tokens"),
            "rows": tokens.get("rows"),
            "padding_ratio": tokens.get("padding_ratio"),
            "tokenizer_note": self.tokenizer_note,
            "sources": [s.as_dict() for s in self.sources],
            "skipped_count": sum(s.skipped_count for s in self.sources),
            "skipped_files": [vars(f) for s in self.sources for f in s.skipped][:SKIPPED_LISTED],
        }


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A short human summary of a report dict, for the command line."""
    pii = ", ".join(f"{k} {v}" for k, v in report["pii_redactions"].items()) or "none"
    over = report["overlength"]
    lines = [
        f"read {report['records_read']} records ({report['format']}): "
        f"train {report['train']}, validation {report['validation']}, test {report['test']}",
        f"malformed {report['malformed']['count']}, too short {report['too_short_removed']}, "
        f"duplicates {report['duplicates_removed']}, leakage {report['leakage_removed']}",
        f"PII redacted: {pii}",
    ]
    for entry in report["malformed"]["first"][:5]:
        lines.append(f"  malformed {entry['file']}:{entry['line']}: {entry['reason']}")
    lines += _skipped_lines(report)
    for mix in report["mix"]:
        lines.append(f"mix {mix['source']}: {mix['drawn']} records drawn (weight {mix['weight']})")
    if report["tokens"] is not None:
        lines.append(
            f"tokens {report['tokens']} in {report['rows']} rows, padding "
            f"{report['padding_ratio']:.1%}; over-length: truncated {over['truncated']}, "
            f"dropped {over['dropped']}, chunked {over['chunked']}"
        )
    else:
        lines.append(f"not tokenised: {report['tokenizer_note']}")
    return lines


def _skipped_lines(report: dict[str, Any]) -> list[str]:
    count = report.get("skipped_count", 0)
    if not count:
        return []
    lines = [f"skipped {count} files in source folders (not read):"]
    for entry in report["skipped_files"][:SKIPPED_SHOWN]:
        lines.append(f"  skipped {entry['file']}: {entry['reason']}")
    if count > SKIPPED_SHOWN:
        lines.append(f"  ... and {count - SKIPPED_SHOWN} more (see data_report.json)")
    return lines
