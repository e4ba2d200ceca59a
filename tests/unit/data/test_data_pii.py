"""PII redaction: every structured kind found, look-alikes left alone, record structure kept.

Names, places, dates, IDs and addresses on realistic text are in test_data_deid.py.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
from finetune_operator import api
from finetune_trainer.data.pii import Redactor

from tests.records import chat
from tests.unit.data.data_helpers import prepare_in

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PRIVATE_KEY = (
    "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY-----"
)
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N"

POSITIVES = [
    ("email", "Write to jane.doe+work@mail.example.co.uk today.", "Write to <EMAIL> today."),
    ("phone", "Call +1 (555) 123-4567 now.", "Call <PHONE> now."),
    ("phone", "Office: +44 20 7946 0958.", "Office: <PHONE>."),
    ("phone", "US line 555-867-5309 or 555.867.5309.", "US line <PHONE> or <PHONE>."),
    ("phone", "Ring (212) 555-0199.", "Ring <PHONE>."),
    ("phone", "Landline 030 1234567.", "Landline <PHONE>."),
    ("credit_card", "Card 4111 1111 1111 1111 expires soon.", "Card <CREDIT_CARD> expires soon."),
    ("credit_card", "Amex 3782-822463-10005.", "Amex <CREDIT_CARD>."),
    ("credit_card", "MC 5555555555554444 on file.", "MC <CREDIT_CARD> on file."),
    ("ip_address", "Server at 192.168.10.42 is down.", "Server at <IP_ADDRESS> is down."),
    ("ip_address", "Host 2001:db8:85a3::8a2e:370:7334 replied.", "Host <IP_ADDRESS> replied."),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00 please.", "IBAN <IBAN> please."),
    ("iban", "Pay GB82WEST12345698765432.", "Pay <IBAN>."),
    ("ssn", "SSN 123-45-6789 on the form.", "SSN <SSN> on the form."),
    ("secret", "key AKIAIOSFODNN7EXAMPLE leaked", "key <SECRET> leaked"),
    ("secret", "token ghp_" + "A1b2C3d4E5" * 4 + " found", "token <SECRET> found"),
    ("secret", "OPENAI sk-proj-Abc123Def456Ghi789Jkl012", "OPENAI <SECRET>"),
    ("secret", "Authorization: Bearer abc.DEF_123-xyz.987654321", "Authorization: Bearer <SECRET>"),
    ("secret", f"aws_secret_access_key = {AWS_SECRET}", "aws_secret_access_key = <SECRET>"),
    ("secret", PRIVATE_KEY, "<SECRET>"),
    ("secret", f"jwt {JWT}", "jwt <SECRET>"),
]  # fmt: skip


@cache
def _default_redactor() -> Redactor:
    return Redactor(api.PiiSpec())


def redact(text: str, counts: Counter[str]) -> str:
    """text through the default de-identification (mask mode), counts updated."""
    redacted, findings = _default_redactor().redact_text(text)
    counts.update(finding.kind for finding in findings)
    return redacted


@pytest.mark.parametrize(("kind", "text", "expected"), POSITIVES)
def test_each_kind_is_redacted_and_counted(kind, text, expected):
    counts: Counter[str] = Counter()
    assert redact(text, counts) == expected
    assert set(counts) == {kind}


NEGATIVES = [
    "The meeting is at 10:30:45 in Q3 2024, in week 12 or in 2025.",
    "It costs $1,234.56 or EUR 1.234,56 or 1 000 000 yen.",
    "Upgrade from v1.2.3 to version 2.10.4.1, then Python 3.11.4.",
    "ISBN 978-3-16-148410-0 and ISBN 0-306-40615-2 and 9783161484100.",
    "Order 1234567890 shipped; tracking 4111111111111112 (bad checksum).",
    "Room 101, floor 3, population 8,100,000, pi is 3.14159265.",
    "The ratio 12:30:45 and the clock 23:59.",
    "Call extension 4567 or dial 12345.",
    "Use std::vector and a::b in C++.",
    "The sum 3 + 100 - 200 = -97.",
    "Coordinates 48.8566, 2.3522.",
    "sk-short is not a key, nor is password: short.",
    "Model GPT-4o and ISO 8601 and RFC 2616.",
]


@pytest.mark.parametrize("text", NEGATIVES)
def test_ordinary_numbers_dates_prices_versions_are_kept(text):
    counts: Counter[str] = Counter()
    assert redact(text, counts) == text
    assert not counts


def test_redaction_keeps_roles_and_turns_and_reports_counts(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": "You are a helpdesk bot."},
            {"role": "user", "content": "I am bob@example.com, card 4111 1111 1111 1111."},
            {"role": "assistant", "content": "Thanks, I will email you."},
            {"role": "user", "content": "Or call 555-123-4567."},
            {"role": "assistant", "content": "Noted: 555-123-4567 and bob@example.com."},
        ]
    }
    prepared = prepare_in(tmp_path, [record], dataset={"validationSplit": 0.0})
    (cleaned,) = prepared.train
    assert [m["role"] for m in cleaned["messages"]] == [m["role"] for m in record["messages"]]
    assert cleaned["messages"][1]["content"] == "I am <EMAIL>, card <CREDIT_CARD>."
    assert cleaned["messages"][4]["content"] == "Noted: <PHONE> and <EMAIL>."
    assert prepared.report["pii_redactions"] == {"credit_card": 1, "email": 2, "phone": 2}


def test_redaction_can_be_turned_off(tmp_path):
    record = chat("Mail me at bob@example.com", "Sure.")
    prepared = prepare_in(
        tmp_path, [record], dataset={"validationSplit": 0.0, "cleaning": {"redactPII": False}}
    )
    assert prepared.train == [record] and prepared.report["pii_redactions"] == {}


def test_alpaca_and_preference_fields_are_redacted_in_place(tmp_path):
    record = {"prompt": "Email a@b.io", "chosen": "Sent to a@b.io.", "rejected": "No."}
    prepared = prepare_in(
        tmp_path,
        [record],
        dataset={"train": {"format": "preference"}, "validationSplit": 0.0},
    )
    assert prepared.train == [
        {"prompt": "Email <EMAIL>", "chosen": "Sent to <EMAIL>.", "rejected": "No."}
    ]
