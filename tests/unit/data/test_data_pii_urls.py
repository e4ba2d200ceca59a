"""Web addresses are redacted, offline: tldextract's bundled suffix list, never the live one.

File names, versions and codes that only look like hosts stay.
"""

from __future__ import annotations

import socket
from functools import cache

import pytest
from finetune_operator import api
from finetune_trainer.data.pii import Redactor
from finetune_trainer.data.pii_urls import is_web_address, suffix_extractor

REDACTED = [
    ("See https://intranet.example.org/ward/7, then call.", "See <URL>, then call."),
    ("Profile: linkedin.com/in/anna-berg-7731.", "Profile: <URL>."),
    ("Her blog www.annaberg.net is private.", "Her blog <URL> is private."),
    ("Chart at http://ehr-prod/patients/4411?tab=notes#top.", "Chart at <URL>."),
    ("Old box http://10.2.3.4:8080/chart?id=7 is down.", "Old box <URL> is down."),
    ("The portal (https://mychart.stmarys.org/login) is down.", "The portal (<URL>) is down."),
    ("News on bbc.co.uk/news and spiegel.de today.", "News on <URL> and <URL> today."),
    ("Uploaded to ftp://files.clinic.health/scans/8812.", "Uploaded to <URL>."),
]
KEPT = [
    "Run setup.py, then read notes.md and data/train.jsonl.",
    "Upgrade torch to version 2.3.1 and ray 2.60.0.",
    "Lipitor 20 mg daily; ICD-10 E11.9; order ORD-2024.55; BP 120/80.",
    "Ask at the desk.It opened at 9.",
    "Unpack archive.zip and play clip.mov.",
    "Write to bob@example.com about it.",
]


@cache
def redactor(*entities: str) -> Redactor:
    pii = {"entities": list(entities)} if entities else {}
    return Redactor(api.PiiSpec.model_validate(pii))


@pytest.mark.parametrize(("text", "expected"), REDACTED)
def test_web_addresses_become_url_placeholders(text, expected):
    redacted, findings = redactor().redact_text(text)
    assert redacted == expected
    assert {f.kind for f in findings} == {"url"}


@pytest.mark.parametrize("text", KEPT)
def test_file_names_versions_and_codes_are_not_addresses(text):
    redacted, findings = redactor().redact_text(text)
    assert [f.kind for f in findings if f.kind == "url"] == []
    if "@" not in text:
        assert redacted == text


def test_a_whole_address_wins_over_the_name_inside_it():
    text = "Dr. Anna Berg's page is https://example.org/staff/anna-berg."
    redacted, _ = redactor().redact_text(text)
    assert redacted == "Dr. <PERSON>'s page is <URL>."


def test_urls_are_kept_when_the_job_leaves_the_kind_out():
    text = "See https://intranet.example.org/ward/7, Anna Berg."
    redacted, _ = redactor("person").redact_text(text)
    assert redacted == "See https://intranet.example.org/ward/7, <PERSON>."


def test_url_is_a_default_kind_counted_in_reports():
    assert "url" in api.PiiSpec().entities
    _, counts = redactor().redact_record(
        {"messages": [{"role": "user", "content": "Go to www.example.com now."}]}, "messages"
    )
    assert counts == {"url": 1}


def test_the_suffix_list_is_the_bundled_one_and_nothing_is_fetched(monkeypatch):
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    suffix_extractor.cache_clear()  # read the suffix list again, with the network refused
    assert suffix_extractor().suffix_list_urls == ()
    assert is_web_address("portal.example.co.uk")
    assert not is_web_address("portal.example.notasuffix")
    assert suffix_extractor()("clinic.health").suffix == "health"  # a 2014 gTLD: a real list
