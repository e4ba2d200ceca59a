"""Presidio recognizers for what spaCy's NER does not find: IDs, addresses, dates, phones.

Three families:
- our validated detectors (Luhn cards, mod-97 IBANs, parsed IPs, keys and tokens) wrapped
  as one recognizer per kind, scored high because a checksum or a fixed prefix backs them;
- context-aware patterns for identifiers that look like any other number (medical record,
  passport and licence numbers, dates of birth): they score below the default threshold on
  their own and pass it only with a context word ("MRN", "passport", "born") in the five
  non-stop-word tokens before them, through Presidio's lemma context enhancer (set to
  whole-word matching: by default "dl" would match "landline");
- shapes specific enough to stand alone: calendar dates, street addresses, titled names,
  and phone numbers that python-phonenumbers validates for the regions we list.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult
from presidio_analyzer.predefined_recognizers import PhoneRecognizer, SpacyRecognizer

from finetune_trainer.data.pii_patterns import DETECTORS, Detector
from finetune_trainer.data.pii_urls import WebAddressRecognizer

# Scores: the default threshold is 0.5; CONTEXT_ONLY + Presidio's context boost (0.35) passes it.
CERTAIN, STRONG, LIKELY, CONTEXT_ONLY = 0.95, 0.8, 0.65, 0.3

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_YEAR = r"(?:1[89]|20)\d{2}"
# A calendar date: a day, a month and a year (or a day and a named month). A year alone,
# a quarter or a month alone is not an identifier under HIPAA Safe Harbor.
CALENDAR_DATE = (
    rf"\b(?:\d{{1,2}}[/.-]\d{{1,2}}[/.-](?:{_YEAR}|\d{{2}})"  # 03/14/1962, 14.03.62
    rf"|{_YEAR}-\d{{2}}-\d{{2}}"  # 1962-03-14
    rf"|{_MONTH} {_DAY},? {_YEAR}|{_MONTH} {_DAY}\b"  # March 14, 1962; Mar 14
    rf"|{_DAY} (?:of )?{_MONTH},? {_YEAR}|{_DAY} (?:of )?{_MONTH})(?![\d/.-]\d)"
)
CALENDAR_DATE = "(?i:" + CALENDAR_DATE + ")"
CALENDAR_DATE_RE = re.compile(CALENDAR_DATE)

# USPS street suffixes and their common abbreviations (Publication 28, appendix C1).
# A list literal of 300 words would read worse than this block.
_STREET_SUFFIXES = (  # noqa: SIM905
    "Alley Aly Annex Anx Arcade Arc Avenue Ave Av Bayou Byu Beach Bch Bend Bnd Bluffs? Blfs? "
    "Bottom Btm Boulevard Blvd Branch Br Bridge Brg Brook Brk Brooks Brks Burgs? Bgs? "
    "Bypass Byp Camp Cp Canyon Cyn Cape Cpe Causeway Cswy Centers? Ctrs? Ctr Circles? Cirs? "
    "Cir Cliffs? Clfs? Club Clb Common Cmn Commons Cmns Corners? Cors? Cor Course Crse "
    "Courts? Cts? Ct Coves? Cvs? Cv Creek Crk Crescent Cres Crest Crst Crossing Xing "
    "Crossroad Xrd Curve Curv Dale Dl Dam Dm Divide Dv Drives? Drs? Dr Estates? Ests? Est "
    "Expressway Expy Extensions? Exts? Ext Falls? Fls? Ferry Fry Fields? Flds? Fld Flats? "
    "Flts? Flt Fords? Frds? Frd Forest Frst Forges? Frgs? Frg Forks? Frks? Frk Fort Ft "
    "Freeway Fwy Gardens? Gdns? Gdn Gateway Gtwy Glens? Glns? Gln Greens? Grns? Grn Groves? "
    "Grvs? Grv Harbors? Hbrs? Hbr Haven Hvn Heights Hts Highway Hwy Hills? Hls? Hl Hollow "
    "Holw Inlet Inlt Islands? Iss? Is Isle Junctions? Jcts? Jct Keys? Kys? Ky Knolls? Knls? "
    "Knl Lakes? Lks? Lk Land Landing Lndg Lane Ln Light Lgt Lights Lgts Loaf Lf Locks? Lcks? "
    "Lck Lodge Ldg Loop Mall Manors? Mnrs? Mnr Meadows? Mdws? Mdw Mews Mill Ml Mills Mls "
    "Mission Msn Motorway Mtwy Mount Mt Mountains? Mtns? Mtn Neck Nck Orchard Orch Oval "
    "Overpass Opas Park Parks Parkways? Pkwys? Pkwy Pass Passage Psge Path Pike Pines? Pnes? "
    "Pne Place Pl Plains? Plns? Pln Plaza Plz Points? Pts? Pt Ports? Prts? Prt Prairie Pr "
    "Radial Radl Ramp Ranch Rnch Rapids? Rpds? Rpd Rest Rst Ridges? Rdgs? Rdg River Riv "
    "Roads? Rds? Rd Route Rte Row Rue Run Shoals? Shls? Shl Shores? Shrs? Shr Skyway Skwy "
    "Springs? Sprgs? Spg Spur Spurs Squares? Sqs? Sq Station Sta Stravenue Stra Stream Strm "
    "Streets? Sts? St Summit Smt Terrace Ter Throughway Trwy Trace Trce Track Trak Trafficway "
    "Trfy Trail Trl Trailer Trlr Tunnel Tunl Turnpike Tpke Underpass Upas Unions? Uns? Un "
    "Valleys? Vlys? Vly Viaducts? Via Views? Vws? Vw Villages? Vlgs? Vlg Ville Vl Vista Vis "
    "Walks? Wall Way Ways Wells? Wls? Wl"
).split()
_SUFFIX = "(?:" + "|".join(sorted(_STREET_SUFFIXES, key=len, reverse=True)) + r")\.?"
_UNIT = r"(?:,?\s(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Flat|Floor|Fl\.?|#)\s?[A-Z0-9-]{1,6})"
_NAME_WORD = r"(?:[A-Z][a-z]*(?:'[A-Z]?[a-z]+)+|[A-Z][a-z]+|[A-Z]{1,2}|\d{1,3}(?:st|nd|rd|th))"
_POSTCODE = (
    r"(?:\d{5}(?:-\d{4})?"  # US ZIP
    r"|[A-Z]{1,2}\d[A-Z\d]?\s?\d[A-Z]{2}"  # UK
    r"|[A-Z]\d[A-Z]\s?\d[A-Z]\d"  # Canada
    r"|\d{4,5})"  # most of Europe, Australia
)
_HOUSE = (
    r"(?:(?:Flat|Studio|Apartment|Unit|Suite)\s[\w-]{1,5},?\s(?:\d{1,6}[A-Z]?\s)?"
    r"|\d{1,6}[A-Z]?\s)"
)
# "1234 Elm Street Apt. 5, Springfield, IL 62704" or "Flat 3, Cross Grove, Leeds, W21 6SA":
# a house number or unit, one to four capitalised words, a street suffix, then optionally a
# unit, a town, a state or county and a postcode.
STREET_ADDRESS = (
    rf"\b{_HOUSE}(?:[NSEW]\.?\s|North\s|South\s|East\s|West\s)?"
    rf"(?:{_NAME_WORD}\s){{1,4}}{_SUFFIX}(?![\w])"
    rf"{_UNIT}?"
    rf"(?:,?\s(?:[A-Z][a-z']+(?:\s[A-Z][a-z']+){{0,2}}),?\s(?:[A-Z]{{2,3}}\s)?{_POSTCODE})?"
)
# US military mail: "PSC 1878, Box 1177, APO AA 76889", "USNS Brown, FPO AE 09363".
MILITARY_ADDRESS = (
    r"\b(?:(?:PSC|Unit|CMR)\s\d{3,5},?\s?Box\s\d{3,5}|(?:USNS|USNV|USS|USCGC)\s[A-Z][a-z]+)"
    r",\s(?:APO|FPO|DPO)\s(?:AA|AE|AP)\s\d{5}\b"
)
PO_BOX = r"\bP\.?\s?O\.?\s?Box\s\d{1,6}\b"

# Words that, among the five before it, make an ambiguous number an identifier.
CONTEXT_WORDS = {
    "medical_record_number": (
        "mrn", "mr", "record", "chart", "medical", "patient", "hospital", "mrn#",
    ),
    "passport": ("passport", "travel", "document"),
    "drivers_license": ("license", "licence", "driver", "driving", "dl", "dln"),
    "date_of_birth": ("dob", "birth", "born", "d.o.b"),
}  # fmt: skip

# One word of a name: Anna, Garcia-Lopez, O'Malley, D'Souza.
_NAME = r"(?:[A-Z]'[A-Z][a-z]+|[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?)"
# Titles and form labels that announce a person's name.
_TITLED_NAME = rf"\b(?:Mr|Mrs|Ms|Mx|Dr|Prof|Miss|Sir|Madam)\.?\s((?:{_NAME}\s?){{1,3}})"
_LABELLED_NAME = (
    r"(?:\b(?:[Pp]atient|[Nn]ame|[Nn]ame is|I am|I'm|[Tt]his is|[Cc]lient|[Tt]enant"
    r"|[Ll]andlord|[Bb]uyer|[Ss]eller|[Ee]mployee|[Ss]igned|[Bb]etween|[Dd]ear|[Bb]y)\b:?,?\s)"
    rf"((?:{_NAME}\s?){{2,3}})"
)

# A name followed by the role a contract gives it: Jane Roe ("Tenant").
_NAME_BEFORE_ROLE = rf"((?:{_NAME}\s){{2,3}})\(\s?[\"\u201c]"
# A place announced by what people say about where they live or come from.
_CUED_PLACE = (
    r"\b(?:moved (?:here )?(?:from|to)|lives in|living in|based in|born in|grew up in"
    r"|resident of|relocated (?:from|to)|travell?ed (?:from|to)|hometown(?: is)?|from the town of)"
    r"\s((?:[A-Z][a-z']+\s?){1,3})"
)

# A phone number announced by a verb: spaCy counts "call" as a stop word, so Presidio's
# context enhancer never sees it ("call me at 4323611949").
_CUED_PHONE = (
    r"(?i:\b(?:call|text|ring|dial|reach|reached|contact)(?:\s(?:me|us|him|her|them))?"
    r"(?:\s(?:at|on))?\s)(\+?[\d(][\d()\s.-]{6,18}\d)"
)

# Regions whose phone formats python-phonenumbers validates in free text.
# Each region costs a full scan; "+<country>" numbers match whatever the region.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN", "AU")
PHONE_CONTEXT = ("phone", "telephone", "tel", "mobile", "cell", "fax", "number", "reach", "contact")


class DetectorRecognizer(EntityRecognizer):
    """Our regex detectors of one kind (checksums included) as a Presidio recognizer."""

    def __init__(self, kind: str, detectors: Sequence[Detector], score: float) -> None:
        self.detectors, self.score = list(detectors), score
        super().__init__(supported_entities=[kind], name=f"finetune_{kind}")

    def load(self) -> None:
        """Nothing to load: the patterns are compiled at import."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        kind = self.supported_entities[0]
        results = []
        for detector in self.detectors:
            if not detector.may_match(text):
                continue
            for match in detector.pattern.finditer(text):
                if detector.accept(match):
                    start, end = match.span(detector.group)
                    results.append(RecognizerResult(kind, start, end, self.score))
        return results


class GroupPatternRecognizer(EntityRecognizer):
    """Patterns whose first group is the value, after a cue that is not (a title, a label)."""

    def __init__(self, kind: str, patterns: Sequence[str], score: float) -> None:
        self.patterns = [re.compile(pattern) for pattern in patterns]
        self.score = score
        super().__init__(supported_entities=[kind], name=f"finetune_{kind}_cued")

    def load(self) -> None:
        """Nothing to load: the patterns are compiled at construction."""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        kind = self.supported_entities[0]
        results = []
        for pattern in self.patterns:
            for match in pattern.finditer(text):
                start = match.start(1)
                value = match.group(1).rstrip()  # the pattern may take a trailing space
                results.append(RecognizerResult(kind, start, start + len(value), self.score))
        return results


class ProperNounRecognizer(SpacyRecognizer):
    """spaCy's entities, names and places only where the tagger saw a proper noun.

    The small English model labels capitalised common words ("Email a@b.io") as people
    on short, ungrammatical text; a name always holds a proper noun (NNP).
    """

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts)
        if nlp_artifacts is None:
            return results
        doc = nlp_artifacts.tokens
        kept = []
        for result in results:
            span = doc.char_span(result.start, result.end, alignment_mode="expand")
            if result.entity_type == "date" or (
                span is not None and any(token.tag_ in ("NNP", "NNPS") for token in span)
            ):
                kept.append(result)
        return kept


class ValidatedPhoneRecognizer(PhoneRecognizer):
    """python-phonenumbers' valid numbers; written like a phone number, they stand alone.

    A bare run of digits ("Order 1234567890") or ISBN-like groups only counts with a
    context word nearby ("call", "phone", "mobile").
    """

    SCORE = LIKELY

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: Any = None
    ) -> list[RecognizerResult]:
        if sum(char.isdigit() for char in text) < 7:  # no phone number has fewer digits
            return []
        results: list[RecognizerResult] = super().analyze(text, entities, nlp_artifacts)
        for result in results:
            if not _written_as_phone(text[result.start : result.end]):
                result.score = CONTEXT_ONLY
        return results


def _written_as_phone(value: str) -> bool:
    if value.startswith("+") or "(" in value:
        return True
    groups = re.split(r"[\s.-]+", value)
    return len(groups) >= 2 and all(len(group) >= 2 for group in groups)


def _context_patterns(
    kind: str, patterns: Sequence[str], context: Sequence[str], score: float = CONTEXT_ONLY
) -> PatternRecognizer:
    return PatternRecognizer(
        supported_entity=kind,
        name=f"finetune_{kind}",
        patterns=[Pattern(f"{kind}_{i}", regex, score) for i, regex in enumerate(patterns)],
        context=list(context),
        # Case matters: capitalised words make a street name, not any word before "way".
        global_regex_flags=re.DOTALL | re.MULTILINE,
    )


def build_recognizers() -> list[EntityRecognizer]:
    """Every recognizer of ours; spaCy's NER recognizer comes from the engine."""
    by_kind: dict[str, list[Detector]] = {}
    for detector in DETECTORS:
        by_kind.setdefault(detector.kind, []).append(detector)
    checked = {"secret", "email", "iban", "credit_card", "ssn", "ip_address"}
    recognizers: list[EntityRecognizer] = [
        DetectorRecognizer(kind, detectors, CERTAIN if kind in checked else LIKELY)
        for kind, detectors in by_kind.items()
    ]
    recognizers += [
        ValidatedPhoneRecognizer(
            supported_regions=PHONE_REGIONS, supported_entity="phone", context=list(PHONE_CONTEXT)
        ),
        _context_patterns(
            "medical_record_number",
            [r"\b(?:[A-Z]{1,3}[- ]?)?\d{5,10}\b", r"\b\d{2,4}-\d{2,4}-\d{1,4}\b"],
            CONTEXT_WORDS["medical_record_number"],
        ),
        _context_patterns(
            "passport",
            [r"\b[A-Z]{1,2}\d{6,8}\b", r"\b\d{9}\b", r"\b[A-Z0-9]{9}\b"],
            CONTEXT_WORDS["passport"],
        ),
        _context_patterns(
            "drivers_license",
            [
                r"\b[A-Z]{1,2}\d{5,13}\b",
                r"\b\d{7,12}\b",
                r"\b[A-Z]\d{3}[- ]\d{4}[- ]\d{4}(?:[- ]\d{2,4})?\b",
                r"\b[A-Z]{5}\d{6}[A-Z0-9]{5}\b",  # UK: MORGA657054SM9IJ
            ],
            CONTEXT_WORDS["drivers_license"],
        ),
        _context_patterns(
            "date_of_birth",
            [CALENDAR_DATE],
            CONTEXT_WORDS["date_of_birth"],
        ),
        _context_patterns("date", [CALENDAR_DATE], [], score=LIKELY),
        _context_patterns(
            "street_address", [STREET_ADDRESS, MILITARY_ADDRESS, PO_BOX], [], score=STRONG
        ),
        GroupPatternRecognizer("person", [_TITLED_NAME, _LABELLED_NAME, _NAME_BEFORE_ROLE], STRONG),
        GroupPatternRecognizer("location", [_CUED_PLACE], STRONG),
        GroupPatternRecognizer("phone", [_CUED_PHONE], STRONG),
        WebAddressRecognizer(certain=CERTAIN, likely=LIKELY),
    ]
    return recognizers
