"""Validated patterns for structured PII and secrets (the regex half of de-identification).

Each detector is a regular expression for candidates plus, where the kind has one, a
checksum or a parse that rejects look-alikes (Luhn for cards, mod-97 for IBANs, the
ipaddress module for IPs). Patterns demand the separators real numbers are written with,
so ordinary numbers, dates, times, prices, versions and ISBNs stay untouched.
Detectors run in order: secrets first (key blocks contain anything), phones last (the
loosest pattern, after cards, SSNs and IPs have claimed their digits).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

PLACEHOLDERS = {
    "secret": "<SECRET>",
    "email": "<EMAIL>",
    "iban": "<IBAN>",
    "credit_card": "<CREDIT_CARD>",
    "ssn": "<SSN>",
    "ip_address": "<IP_ADDRESS>",
    "phone": "<PHONE>",
}


@dataclass(frozen=True)
class Detector:
    kind: str
    pattern: re.Pattern[str]
    accept: Callable[[re.Match[str]], bool] = lambda match: True
    group: int = 0  # the part of the match replaced (e.g. only the token after "Bearer ")
    # Substrings one of which every match contains: a cheap test that skips the regex on
    # most texts (regex scanning dominates the cost of the whole cleaning stage).
    triggers: tuple[str, ...] = ()

    def may_match(self, text: str) -> bool:
        return not self.triggers or any(trigger in text for trigger in self.triggers)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


# Issuer prefixes of the card networks: Visa, Mastercard, Amex, Discover, JCB, Diners.
_CARD_PREFIX = re.compile(r"^(4|5[1-5]|2[2-7]|3[47]|6011|65|64[4-9]|35|30[0-5]|36|38)")


def _card_ok(match: re.Match[str]) -> bool:
    digits = re.sub(r"\D", "", match.group(0))
    return 13 <= len(digits) <= 19 and bool(_CARD_PREFIX.match(digits)) and _luhn_ok(digits)


def _iban_ok(match: re.Match[str]) -> bool:
    iban = match.group(0).replace(" ", "")
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(char, 36)) for char in rearranged)
    return int(number) % 97 == 1


def _ip_ok(match: re.Match[str]) -> bool:
    try:
        ipaddress.ip_address(match.group(0))
    except ValueError:
        return False
    return True


def _ipv4_ok(match: re.Match[str]) -> bool:
    # "version 1.2.3.4" and "v1.2.3.4" are software versions, not hosts.
    before = match.string[max(0, match.start() - 9) : match.start()].lower()
    return _ip_ok(match) and not re.search(r"(\bv|version\s?|release\s?)$", before)


def _ipv6_plausible(text: str) -> bool:
    # "a::b" and "dead::beef" parse as IPv6 but are C++ scopes and words in prose.
    groups = [g for g in text.split(":") if g]
    return len(groups) >= 2 and sum(map(len, groups)) >= 4 and any(c.isdigit() for c in text)


def _phone_ok(match: re.Match[str]) -> bool:
    number = re.split(r"x|ext", match.group(0))[0]  # an extension's digits are not counted
    return 8 <= len(re.sub(r"\D", "", number)) <= 15


_SECRET_PATTERNS = {
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----": (
        "PRIVATE KEY-----",
    ),
    r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b": ("AKIA", "ASIA", "ABIA", "ACCA"),  # AWS key id
    r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_"),  # GitHub
    r"\bgithub_pat_[A-Za-z0-9_]{22,255}\b": ("github_pat_",),
    r"\bglpat-[A-Za-z0-9_-]{20,}\b": ("glpat-",),  # GitLab
    r"\bsk-(?:proj-|ant-|live-|test-)?[A-Za-z0-9_-]{20,}\b": ("sk-",),  # OpenAI, Stripe style
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b": ("xox",),  # Slack
    r"\bAIza[0-9A-Za-z_-]{35}\b": ("AIza",),  # Google API key
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b": ("eyJ",),  # JWT
}
DIGITS = tuple("0123456789")

DETECTORS = [
    *(
        Detector("secret", re.compile(pattern), triggers=triggers)
        for pattern, triggers in _SECRET_PATTERNS.items()
    ),
    # Only the credential after "Bearer" or a key=value assignment is replaced.
    Detector(
        "secret",
        re.compile(r"\b[Bb]earer\s+([A-Za-z0-9._~+/-]{16,}=*)"),
        group=1,
        triggers=("earer",),
    ),
    Detector(
        "secret",
        re.compile(
            r"(?i)\b(?:aws_secret_access_key|api[_-]?key|secret[_-]?key|access[_-]?token"
            r"|client[_-]?secret|password|passwd)\b\s*[:=]\s*[\"']?([^\s\"']{8,})"
        ),
        group=1,
        triggers=(":", "="),
    ),
    Detector(
        "email",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        triggers=("@",),
    ),
    Detector(
        "iban",
        re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
        _iban_ok,
        triggers=DIGITS,
    ),
    Detector(
        "credit_card",
        re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
        _card_ok,
        triggers=DIGITS,
    ),
    Detector(
        "ssn",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])"),
        triggers=("-",),
    ),
    Detector(
        "ip_address",
        re.compile(
            r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
        ),
        lambda m: _ip_ok(m) and _ipv6_plausible(m.group(0)),
        triggers=(":",),
    ),
    Detector(
        "ip_address",
        re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w.]|\.\d)"),
        _ipv4_ok,
        triggers=(".",),
    ),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:"
            r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
            r"|\(\d{3}\) ?\d{3}[-. ]\d{4}"  # (555) 123-4567
            r"|(?:001[-.])?\d{3}-\d{3}-\d{4}|\d{3}\.\d{3}\.\d{4}"  # 555-123-4567, 555.123.4567
            r"|0\d{2,4}[ /-]\d{6,8}|0\d{2,4}[ -]\d{3,4}[ -]\d{3,4}"  # 030 1234567, 020 7946 0958
            r")(?:\s?(?:x|ext\.?\s?)\d{1,5})?(?![\w])"  # an extension: x123, ext. 45
        ),
        _phone_ok,
        triggers=DIGITS,
    ),
]


def redact(text: str, counts: Counter[str] | None = None) -> str:
    """The text with every detected PII item replaced by its placeholder; counts updated."""
    for detector in DETECTORS:
        if detector.may_match(text):
            text = _apply(detector, text, counts)
    return text


def _apply(detector: Detector, text: str, counts: Counter[str] | None) -> str:
    placeholder = PLACEHOLDERS[detector.kind]

    def replace(match: re.Match[str]) -> str:
        if not detector.accept(match):
            return match.group(0)
        if counts is not None:
            counts[detector.kind] += 1
        if detector.group == 0:
            return placeholder
        start, end = match.span(detector.group)
        whole_start = match.start()
        head = match.group(0)[: start - whole_start]
        tail = match.group(0)[end - whole_start :]
        return f"{head}{placeholder}{tail}"

    return detector.pattern.sub(replace, text)
