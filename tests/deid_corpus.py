"""A labelled synthetic set for de-identification: clinical notes, contracts, support chats.

Faker fills the identifiers (names, addresses, dates, phones in several locales); the
formats of record, passport and licence numbers follow real ones. Every identifier's
position is recorded, and so is every look-alike that must survive (drug doses, ICD codes,
versions, order numbers, quarters, product names, blood pressures). The same generator
feeds the unit tests and bench/deid_eval.py, so the benchmark measures what tests assert.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from faker import Faker

LOCALES = ("en_US", "en_GB", "en_IE", "en_CA", "en_AU", "en_IN")
PHONE_LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "en_IN", "en_AU")
DRUGS = ("Lipitor", "Metformin", "Lisinopril", "Amoxicillin", "Ozempic", "Eliquis", "Zoloft")
PRODUCTS = ("Salesforce", "Epic Hyperspace", "Slack", "Jira", "Workday", "Excel")


@dataclass
class Labelled:
    """A text, where its identifiers are (kind, start, end), and what must survive."""

    text: str = ""
    entities: list[tuple[str, int, int]] = field(default_factory=list)
    keep: list[tuple[int, int]] = field(default_factory=list)

    def add(self, piece: str, kind: str | None = None, *, keep: bool = False) -> None:
        start = len(self.text)
        self.text += piece
        if kind is not None:
            self.entities.append((kind, start, len(self.text)))
        if keep:
            self.keep.append((start, len(self.text)))


class Corpus:
    """Deterministic generator: the same seed, the same texts."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fakers = {locale: Faker(locale) for locale in sorted({*LOCALES, *PHONE_LOCALES})}
        for index, fake in enumerate(self.fakers.values()):
            fake.seed_instance(seed * 100 + index)

    def _fake(self, locales: tuple[str, ...] = LOCALES) -> Faker:
        return self.fakers[self.rng.choice(locales)]

    # Identifiers ---------------------------------------------------------------------
    def name(self) -> str:
        fake = self._fake()
        return f"{fake.first_name()} {fake.last_name()}"

    def titled_name(self, doc: Labelled) -> None:
        """A name, sometimes after a title (the title itself identifies no one)."""
        if self.rng.random() < 0.3:
            doc.add(self.rng.choice(("Mr. ", "Mrs. ", "Ms. ", "Dr ", "Mr ")))
        doc.add(self.name(), "person")

    def mrn(self) -> str:
        digits = "".join(self.rng.choice("0123456789") for _ in range(self.rng.choice((7, 8, 9))))
        return self.rng.choice((digits, f"{digits[:3]}-{digits[3:6]}-{digits[6:]}", f"MR{digits}"))

    def passport(self) -> str:
        fake = self.fakers["en_US"]
        return self.rng.choice(
            (
                fake.bothify("?########").upper(),
                fake.bothify("#########"),
                fake.bothify("??#######").upper(),
            )
        )

    def licence(self) -> str:
        fake = self.fakers["en_US"]
        return self.rng.choice(
            (
                fake.bothify("?#######").upper(),
                fake.bothify("?###-####-####").upper(),
                fake.bothify("#########"),
                fake.bothify("?############").upper(),
            )
        )

    def date(self, *, birth: bool = False) -> str:
        fake = self._fake()
        day = (
            fake.date_of_birth(minimum_age=18, maximum_age=90) if birth else fake.date_this_decade()
        )
        fmt = self.rng.choice(
            ("%m/%d/%Y", "%d/%m/%Y", "%Y-%m-%d", "%B %d, %Y", "%d %B %Y", "%b %d, %Y", "%d.%m.%Y")
        )
        return day.strftime(fmt)

    def phone(self) -> str:
        return self._fake(PHONE_LOCALES).phone_number()

    def address(self) -> str:
        fake = self.fakers[self.rng.choice(("en_US", "en_US", "en_GB", "en_CA"))]
        return fake.address().replace("\n", ", ")

    def city(self) -> str:
        return self.fakers[self.rng.choice(("en_US", "en_GB"))].city()

    def email(self) -> str:
        return self._fake().email()

    # Look-alikes ---------------------------------------------------------------------
    def lookalike(self) -> str:
        rng = self.rng
        return rng.choice(
            (
                f"{rng.choice(DRUGS)} {rng.choice((5, 10, 20, 40, 500))} mg",
                f"ICD-10 {rng.choice('EIJKM')}{rng.randint(10, 99)}.{rng.randint(0, 9)}",
                f"version {rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
                f"order #{rng.randint(1000000, 9999999)}",
                f"Q{rng.randint(1, 4)} {rng.randint(2019, 2026)}",
                f"BP {rng.randint(100, 160)}/{rng.randint(60, 100)}",
                f"HbA1c {rng.randint(5, 11)}.{rng.randint(0, 9)}%",
                f"{rng.choice(PRODUCTS)}",
                f"invoice INV-{rng.randint(10000, 99999)}",
                f"room {rng.randint(100, 999)}",
            )
        )

    # Documents -----------------------------------------------------------------------
    def clinical_note(self) -> Labelled:
        doc = Labelled()
        doc.add("Patient ")
        doc.add(self.name(), "person")
        doc.add(" (MRN: ")
        doc.add(self.mrn(), "medical_record_number")
        doc.add("), date of birth ")
        doc.add(self.date(birth=True), "date_of_birth")
        doc.add(", was admitted on ")
        doc.add(self.date(), "date")
        doc.add(" with chest pain. Started ")
        doc.add(self.lookalike(), keep=True)
        doc.add("; ")
        doc.add(self.lookalike(), keep=True)
        doc.add(". Seen by Dr. ")
        doc.add(self.fakers["en_US"].last_name(), "person")
        doc.add(". Home address: ")
        doc.add(self.address(), "street_address")
        doc.add(". Daughter can be reached on ")
        doc.add(self.phone(), "phone")
        doc.add(".")
        return doc

    def contract(self) -> Labelled:
        doc = Labelled()
        doc.add("This Lease Agreement is made on ")
        doc.add(self.date(), "date")
        doc.add(" between ")
        self.titled_name(doc)
        doc.add(' ("Tenant"), holder of passport number ')
        doc.add(self.passport(), "passport")
        doc.add(", residing at ")
        doc.add(self.address(), "street_address")
        doc.add(", and ")
        self.titled_name(doc)
        doc.add(' ("Landlord"). Rent is payable under ')
        doc.add(self.lookalike(), keep=True)
        doc.add(" and the tenant uses ")
        doc.add(self.lookalike(), keep=True)
        doc.add(". Notices go to ")
        doc.add(self.email(), "email")
        doc.add(".")
        return doc

    def chat(self) -> list[Labelled]:
        person = self.name()
        first = person.split()[0]
        user, assistant, again = Labelled(), Labelled(), Labelled()
        user.add("Hi, my name is ")
        user.add(person, "person")
        user.add(" and I moved here from ")
        user.add(self.city(), "location")
        user.add(". My driver's license number is ")
        user.add(self.licence(), "drivers_license")
        user.add(", you can call me at ")
        user.add(self.phone(), "phone")
        user.add(". It is about ")
        user.add(self.lookalike(), keep=True)
        user.add(".")
        assistant.add("Thanks ")
        assistant.add(first, "person")
        assistant.add(", I have updated ")
        assistant.add(self.lookalike(), keep=True)
        assistant.add(". To confirm, you were born on ")
        assistant.add(self.date(birth=True), "date_of_birth")
        assistant.add("?")
        again.add("Yes. And ")
        again.add(self.lookalike(), keep=True)
        again.add(" is fine.")
        return [user, assistant, again]

    def documents(self, count: int) -> list[list[Labelled]]:
        """count records, each a list of texts (chats have several turns)."""
        makers = (lambda: [self.clinical_note()], lambda: [self.contract()], self.chat)
        return [makers[i % 3]() for i in range(count)]


@dataclass
class Scores:
    """Recall per kind (identifiers fully hidden), precision, look-alikes left intact."""

    found: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    true_findings: int = 0
    findings: int = 0
    kept: int = 0
    lookalikes: int = 0

    def recall(self, kind: str | None = None) -> float:
        kinds = [kind] if kind else list(self.total)
        total = sum(self.total[k] for k in kinds)
        return sum(self.found.get(k, 0) for k in kinds) / max(total, 1)

    @property
    def precision(self) -> float:
        return self.true_findings / max(self.findings, 1)

    @property
    def lookalikes_kept(self) -> float:
        return self.kept / max(self.lookalikes, 1)


def score(documents: list[list[Labelled]], spans_of: object) -> Scores:
    """Score a detector: spans_of(texts) gives, per text, the (start, end) spans it redacts.

    An identifier counts as found when every letter and digit of it is inside a redacted
    span (whatever kind the span was given: a hidden date of birth is hidden). A redacted
    span is true when it overlaps an identifier.
    """
    result = Scores()
    for texts in documents:
        spans_per_text = spans_of([t.text for t in texts])  # type: ignore[operator]
        for labelled, spans in zip(texts, spans_per_text, strict=True):
            covered = [False] * len(labelled.text)
            for start, end in spans:
                for i in range(start, end):
                    covered[i] = True
                result.findings += 1
                if any(s < end and start < e for _, s, e in labelled.entities):
                    result.true_findings += 1
            for kind, start, end in labelled.entities:
                result.total[kind] = result.total.get(kind, 0) + 1
                chars = [i for i in range(start, end) if labelled.text[i].isalnum()]
                if all(covered[i] for i in chars):
                    result.found[kind] = result.found.get(kind, 0) + 1
            for start, end in labelled.keep:
                result.lookalikes += 1
                result.kept += not any(covered[start:end])
    return result


def chat_lines(documents: list[list[Labelled]]) -> list[str]:
    """Each document as one JSONL chat: its texts as alternating user/assistant turns,
    ending on an assistant turn so that every record carries loss."""
    lines = []
    for texts in documents:
        turns = [t.text for t in texts] + ["Noted."]
        roles = ["user", "assistant"]
        messages = [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]
        lines.append(json.dumps({"messages": messages}))
    return lines
