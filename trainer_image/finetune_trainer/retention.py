"""The retention check: does the fine-tuned model still know what its base knew?

Each `evaluation.retention` set is read with the data stage's readers (local, pvc://, s3://,
hf://), checked and normalised like training records, then tokenised like the validation
data. Its loss is
measured on the base model and on the model the outputs hold; the change per set goes to
metrics.json, status.result and the model card, and past
`evaluation.maxRetentionLossIncrease` the run is marked as regressed (the model is still
written: the user decides).

The records are not deduplicated, redacted or checked for leakage against train: they are
evaluation-only data the user chose as a yardstick, never trained on and never written
anywhere (only the mean losses leave the run), and rewriting them (<PERSON> for names)
would change what is being measured, equally before and after, without protecting anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_operator import api

from finetune_trainer.errors import DataError

if TYPE_CHECKING:
    from finetune_trainer.data.formats import Record
    from finetune_trainer.data.packing import Row

# The data stage's modules load on use: the model card and `finetune run`'s summary read
# only the comparison below.

PREFIX = "retention_"
REGRESSED = "retention_regressed"
THRESHOLD = "retention_max_loss_increase"


@dataclass
class RetentionSet:
    """One retention source's checked records and what was wrong with the others."""

    name: str
    source: api.RetentionSource
    records: list[Record] = field(default_factory=list)
    read: int = 0
    malformed: list[str] = field(default_factory=list)  # "file:line (reason)", the first few
    malformed_count: int = 0

    def report(self) -> dict[str, Any]:
        """This set's entry in data_report.json's `retention`."""
        return {
            "name": self.name,
            "source": self.source.source,
            "format": self.source.format,
            "records_read": self.read,
            "records": len(self.records),
            "malformed": {"count": self.malformed_count, "first": self.malformed},
        }


def read_sets(spec: api.FineTuneJobSpec, *, base_dir: Path | None) -> list[RetentionSet]:
    """Every retention set's records; DataError when one is empty or mostly malformed."""
    from finetune_trainer.data.clean import FIRST_MALFORMED_LISTED, clean_item
    from finetune_trainer.data.readers import SourceLineage, read_source

    sets = []
    for index, source in enumerate(spec.evaluation.retention):
        kept = RetentionSet(source.display_name, source)
        lineage = SourceLineage("retention", source.source, source.format)
        for raw in read_source(source.source, lineage, split=source.split, base_dir=base_dir):
            kept.read += 1
            # Checked and normalised as training records are, but never redacted (no NER).
            item = clean_item(raw, source.format, spec.dataset.cleaning, redactor=None)
            if item.record is not None:
                kept.records.append(item.record)
            elif item.malformed is not None:
                kept.malformed_count += 1
                if len(kept.malformed) < FIRST_MALFORMED_LISTED:
                    kept.malformed.append(f"{raw.origin}:{raw.line} ({item.malformed})")
        _check_usable(kept, f"spec.evaluation.retention[{index}]", spec.dataset.cleaning)
        sets.append(kept)
    return sets


def _check_usable(kept: RetentionSet, where: str, cleaning: api.CleaningSpec) -> None:
    from finetune_trainer.data.clean import check_malformed_share

    if not kept.records:
        first = f"; first: {'; '.join(kept.malformed)}" if kept.malformed else ""
        raise DataError(f"{where}: {kept.source.source}: no usable records{first}")
    check_malformed_share(
        f"{where}: {kept.source.source}", kept.malformed_count, kept.read, kept.malformed, cleaning
    )


def tokenize_sets(
    sets: list[RetentionSet], tokenizer: Any, dataset: api.DatasetSpec
) -> dict[str, list[Row]]:
    """Rows per set, built as validation rows are (chat template, loss on answers only)."""
    from finetune_trainer.data.packing import build_rows

    rows = {}
    for kept in sets:
        rows[kept.name], _ = build_rows(kept.records, kept.source.format, tokenizer, dataset)
        if not rows[kept.name]:
            raise DataError(f"{kept.source.source}: no rows left after tokenisation")
    return rows


def compare(
    before: dict[str, dict[str, float]],
    after: dict[str, dict[str, float]],
    max_increase: float | None,
) -> dict[str, Any]:
    """metrics.json's retention entries: per set the loss and perplexity before and after
    and the loss increase; with a threshold, the threshold and whether any set passed it."""
    metrics: dict[str, Any] = {}
    regressed = False
    for name, base in before.items():
        tuned = after[name]
        increase = tuned["loss"] - base["loss"]
        metrics |= {
            f"{PREFIX}{name}_loss_before": base["loss"],
            f"{PREFIX}{name}_loss_after": tuned["loss"],
            f"{PREFIX}{name}_loss_increase": increase,
            f"{PREFIX}{name}_perplexity_before": base["perplexity"],
            f"{PREFIX}{name}_perplexity_after": tuned["perplexity"],
        }
        regressed = regressed or (max_increase is not None and increase > max_increase)
    if before and max_increase is not None:
        metrics |= {THRESHOLD: max_increase, REGRESSED: regressed}
    return metrics


def results(spec: api.FineTuneJobSpec, metrics: dict[str, Any]) -> list[api.RetentionResult]:
    """status.result.retention from metrics.json's entries, in the spec's order."""
    limit = spec.evaluation.max_retention_loss_increase
    found = []
    for source in spec.evaluation.retention:
        key = f"{PREFIX}{source.display_name}_loss_"
        if f"{key}before" not in metrics:
            continue
        increase = metrics[f"{key}increase"]
        found.append(
            api.RetentionResult(
                name=source.display_name,
                lossBefore=metrics[f"{key}before"],
                lossAfter=metrics[f"{key}after"],
                lossIncrease=increase,
                exceeded=limit is not None and increase > limit,
            )
        )
    return found


def warnings(spec: api.FineTuneJobSpec, metrics: dict[str, Any]) -> list[str]:
    """One line per retention set whose loss rose past the threshold (what `finetune run`
    prints; the operator posts the same as a Warning Event)."""
    limit = spec.evaluation.max_retention_loss_increase
    return [
        f"retention regressed: {r.name} loss {r.loss_before:.4f} -> {r.loss_after:.4f} "
        f"(+{r.loss_increase:.4f}, more than maxRetentionLossIncrease {limit}); "
        "the model was written: check it before use"
        for r in results(spec, metrics)
        if r.exceeded
    ]


def prepare(
    spec: api.FineTuneJobSpec, *, base_dir: Path | None, model_dir: Path
) -> tuple[dict[str, list[Row]], dict[str, Any]]:
    """The retention sets' rows and their data_report.json entry ({} without retention)."""
    from finetune_trainer.model import load_tokenizer

    if not spec.evaluation.retention:
        return {}, {}
    sets = read_sets(spec, base_dir=base_dir)
    tokenizer = load_tokenizer(model_dir, spec.model, spec.dataset.chat_template)
    rows = tokenize_sets(sets, tokenizer, spec.dataset)
    return rows, {"retention": [kept.report() for kept in sets]}
