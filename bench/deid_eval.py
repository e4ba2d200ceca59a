"""De-identification benchmark: recall/precision per kind, and records/s on one core.

Runs our configuration (with and without an allow-list of the drug and product names in the
set) and Presidio's default configuration over the same spaCy pipeline on the labelled
synthetic set of tests/deid_corpus.py (a seed the tests do not use), then times the whole
data stage on one core with redaction on and off.

    .venv/bin/python bench/deid_eval.py [--records 600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_operator import api
from finetune_trainer.data.pii import Redactor
from finetune_trainer.data.pii_engine import spacy_model_name

from tests.deid_corpus import DRUGS, PRODUCTS, Corpus, Labelled, Scores, chat_lines, score

BENCH_SEED = 4242


def ours(allow: bool) -> object:
    spec = api.PiiSpec.model_validate({"allowList": [*DRUGS, *PRODUCTS] if allow else []})
    redactor = Redactor(spec)

    def spans_of(texts: list[str]) -> list[list[tuple[int, int]]]:
        record = {"messages": [{"role": "user", "content": t} for t in texts]}
        found = redactor.find_in_record(record, "messages")
        return [[(f.start, f.end) for f in found[t]] for t in texts]

    return spans_of


def presidio_default() -> object:
    """Presidio's predefined recognizers and default threshold, over the same spaCy model."""
    import tldextract
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    # Its e-mail recognizer would fetch the public suffix list: use the bundled snapshot.
    tldextract.extract = tldextract.TLDExtract(suffix_list_urls=())
    provider = NlpEngineProvider(
        nlp_configuration={
            "nlp_engine_name": "spacy",
            "models": [{"lang_code": "en", "model_name": spacy_model_name()}],
        }
    )
    engine = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])

    def spans_of(texts: list[str]) -> list[list[tuple[int, int]]]:
        return [[(r.start, r.end) for r in engine.analyze(text=t, language="en")] for t in texts]

    return spans_of


def table(name: str, scores: Scores, seconds: float, records: int) -> dict[str, object]:
    row: dict[str, object] = {kind: round(scores.recall(kind), 3) for kind in sorted(scores.total)}
    row.update(
        overall_recall=round(scores.recall(), 3),
        precision=round(scores.precision, 3),
        lookalikes_kept=round(scores.lookalikes_kept, 3),
        records_per_second=round(records / seconds, 1),
    )
    print(f"\n{name}")
    for key, value in row.items():
        print(f"  {key:<24} {value}")
    return row


def data_stage_rate(documents: list[list[Labelled]], redact: bool) -> float:
    """Records/s of `prepare_records` (read, clean, redact, dedup, split) on this process."""
    from finetune_trainer.data import prepare_records

    from tests.factories import MakeJob

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        path.write_text("\n".join(chat_lines(documents)) + "\n", encoding="utf-8")
        spec = MakeJob.data_stage().spec(dataset={"cleaning": {"redactPII": redact}}).typed_spec()
        started = time.perf_counter()
        prepare_records(spec, base_dir=Path(folder))
        return len(documents) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=600)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    documents = Corpus(BENCH_SEED).documents(args.records)
    results = {}
    for name, spans_of in (
        ("ours, allow-list of the set's drug and product names", ours(allow=True)),
        ("ours, defaults (no allow-list)", ours(allow=False)),
        ("Presidio defaults, same spaCy model", presidio_default()),
    ):
        started = time.perf_counter()
        scores = score(documents, spans_of)
        results[name] = table(name, scores, time.perf_counter() - started, len(documents))
    on, off = data_stage_rate(documents, True), data_stage_rate(documents, False)
    print(f"\ndata stage on one core: {on:.1f} records/s with redaction, {off:.0f} without")
    results["data_stage_records_per_second"] = {"redaction": round(on, 1), "none": round(off)}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
