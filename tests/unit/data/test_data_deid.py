"""De-identification on realistic text: recall and precision per kind on a Faker-made set,
the allow-list, pseudonyms consistent across turns, and no value in any report."""

from __future__ import annotations

import json
from collections import Counter
from functools import cache

import pytest
from finetune_operator import api
from finetune_operator.cli import main
from finetune_operator.validation import validate_file
from finetune_trainer.data.pii import Redactor
from finetune_trainer.data.pii_engine import MODEL_ENV, spacy_model_name
from finetune_trainer.errors import DataError
from finetune_trainer.model_card import model_card

from tests.deid_corpus import DRUGS, PRODUCTS, Corpus, Scores, score
from tests.factories import MakeJob, write_job
from tests.unit.data.data_helpers import prepare_in, write_jsonl

# A seed the recognizers were never tuned on (bench/deid_eval.py reports a larger set).
EVAL_SEED, EVAL_RECORDS = 2026, 90
FORMULARY = [*DRUGS, *PRODUCTS]  # what a hospital's allow-list would hold


@cache
def redactor(**pii: object) -> Redactor:
    return Redactor(api.PiiSpec.model_validate(pii))


def as_chat(texts: list[str]) -> dict[str, object]:
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]}


@cache
def evaluation() -> Scores:
    documents = Corpus(EVAL_SEED).documents(EVAL_RECORDS)
    engine = redactor(allowList=tuple(FORMULARY))

    def spans_of(texts: list[str]) -> list[list[tuple[int, int]]]:
        found = engine.find_in_record(as_chat(texts), "messages")
        return [[(f.start, f.end) for f in found[text]] for text in texts]

    return score(documents, spans_of)


KINDS = [
    "person", "location", "date", "date_of_birth", "medical_record_number", "passport",
    "drivers_license", "street_address", "phone", "email",
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_is_found_in_clinical_notes_contracts_and_chats(kind):
    # The bar: every kind at least 0.95 (measured here: 1.0 for all but phone,
    # street_address and person, which miss one item in a few hundred).
    scores = evaluation()
    assert scores.total[kind] >= 30
    assert scores.recall(kind) >= 0.95, f"{kind}: recall {scores.recall(kind):.3f}"


def test_overall_recall_precision_and_lookalikes():
    scores = evaluation()
    assert scores.recall() >= 0.97
    assert scores.precision >= 0.95  # what is redacted is nearly always an identifier
    # Doses, ICD codes, versions, order numbers, quarters, blood pressures survive.
    assert scores.lookalikes_kept >= 0.95


@pytest.mark.parametrize(
    ("text", "survivor", "gone"),
    [
        ("Started Lipitor 20 mg after the visit with Dr. Maria Garcia.", "Lipitor 20 mg", "Maria"),
        ("Ticket moved to Jira by Kevin Walsh on 03/14/2024.", "Jira", "Kevin"),
        ("Zoloft was stopped; Epic Hyperspace shows it for Anna Berg.", "Epic Hyperspace", "Anna"),
    ],
)
def test_allow_listed_terms_are_never_redacted(text, survivor, gone):
    redacted, _ = redactor(allowList=tuple(FORMULARY)).redact_text(text)
    assert survivor in redacted and gone not in redacted


def test_allow_list_matches_whole_words_case_insensitively():
    redacted, findings = redactor(allowList=("garcia",)).redact_text("Dr. Maria Garcia called.")
    assert "Garcia" in redacted and "Maria" not in redacted
    assert [f.kind for f in findings] == ["person"]


def test_pseudonyms_are_consistent_across_turns_and_turns_stay_whole():
    record = as_chat(
        [
            "Hi, I am John Smith. My sister Maria Garcia will call you from 555-867-5309.",
            "Thanks John. I will expect Maria's call on 555-867-5309.",
            "Mr. Smith, your sister Maria Garcia confirmed.",
        ]
    )
    redacted, counts = redactor(mode="pseudonymize").redact_record(record, "messages")
    turns = [m["content"] for m in redacted["messages"]]
    assert [m["role"] for m in redacted["messages"]] == ["user", "assistant", "user"]
    assert turns[0] == ("Hi, I am <PERSON_1>. My sister <PERSON_2> will call you from <PHONE_1>.")
    assert turns[1] == "Thanks <PERSON_1>. I will expect <PERSON_2>'s call on <PHONE_1>."
    assert turns[2] == "Mr. <PERSON_1>, your sister <PERSON_2> confirmed."
    assert counts == {"person": 6, "phone": 2}


def test_numbers_restart_per_record_so_records_are_not_linked():
    first, _ = redactor(mode="pseudonymize").redact_record(as_chat(["Ask Anna Berg."]), "messages")
    second, _ = redactor(mode="pseudonymize").redact_record(as_chat(["Ask Tom Hale."]), "messages")
    assert first["messages"][0]["content"] == second["messages"][0]["content"] == "Ask <PERSON_1>."


def test_mask_mode_gives_typed_placeholders_and_entities_limit_the_kinds():
    text = "Patient Anna Berg, DOB 02/11/1958, lives at 12 Elm Street, Leeds, LS1 4AB."
    masked, _ = redactor().redact_text(text)
    assert masked == "Patient <PERSON>, DOB <DATE_OF_BIRTH>, lives at <STREET_ADDRESS>."
    only_names, _ = redactor(entities=("person",)).redact_text(text)
    assert only_names == "Patient <PERSON>, DOB 02/11/1958, lives at 12 Elm Street, Leeds, LS1 4AB."


def test_ambiguous_ids_need_context_and_the_threshold_decides():
    with_context = "MRN: 48213377, passport number C03005988."
    without = "Ticket 48213377 and batch C03005988."
    assert redactor().redact_text(with_context)[0] == (
        "MRN: <MEDICAL_RECORD_NUMBER>, passport number <PASSPORT>."
    )
    assert redactor().redact_text(without)[0] == without
    strict, _ = redactor(scoreThreshold=0.9).redact_text(with_context)
    assert strict == with_context  # context-backed IDs score 0.65


def test_reports_count_by_kind_and_split_and_hold_no_value(tmp_path):
    documents = Corpus(11).documents(12)
    records = [as_chat([t.text for t in texts] + ["Noted."]) for texts in documents]
    values = {
        labelled.text[start:end]
        for texts in documents
        for labelled in texts
        for _, start, end in labelled.entities
    }
    prepared = prepare_in(tmp_path, records, dataset={"validationSplit": 0.25})
    report = prepared.report
    by_split = report["pii_redactions_by_split"]
    assert by_split["train"] and by_split["validation"]
    total: Counter[str] = Counter()
    for counts in by_split.values():
        total.update(counts)
    assert dict(total) == report["pii_redactions"]
    assert {"person", "street_address", "date_of_birth", "phone"} <= set(total)
    job = MakeJob.data_stage().typed()
    card = model_card(job, {}, report)
    assert "| person |" in card
    written = json.dumps(report) + card + json.dumps(prepared.train + prepared.validation)
    leaked = [v for v in values if v in written]
    assert not leaked


def test_pii_report_shows_findings_in_context_for_a_sample(tmp_path, capsys):
    data = write_jsonl(
        tmp_path / "notes.jsonl",
        [
            as_chat(["Patient Anna Berg (MRN: 48213377) takes Lipitor 20 mg.", "Noted."]),
            "not json",
            as_chat(["What is 2+2?", "4"]),
        ],
    )
    job = write_job(
        tmp_path,
        MakeJob.data_stage().spec(dataset={"cleaning": {"pii": {"allowList": ["Lipitor"]}}}).obj(),
    )
    assert main(["pii-report", str(data), "--job", str(job), "--sample", "5"]) == 0
    out = capsys.readouterr().out
    assert "2 records reviewed" in out
    assert "Patient [[Anna Berg]] (MRN: 48213377)" in out
    assert "MRN: [[48213377]]" in out and "[[Lipitor" not in out
    assert "> Patient <PERSON> (MRN: <MEDICAL_RECORD_NUMBER>) takes Lipitor 20 mg." in out
    assert main(["pii-report", str(data), "--json", "--sample", "1", "--seed", "3"]) == 0
    review = json.loads(capsys.readouterr().out)
    assert review["records_reviewed"] == 1 and review["records"][0]["line"] in (1, 3)


def test_pii_report_errors_name_the_problem(tmp_path, capsys):
    assert main(["pii-report", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err
    empty = write_jsonl(tmp_path / "bad.jsonl", ["not json"])
    assert main(["pii-report", str(empty), "--sample", "0"]) == 1
    assert "--sample" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pii", "path"),
    [
        ({"mode": "hide"}, "spec.dataset.cleaning.pii.mode"),
        ({"scoreThreshold": 1.5}, "spec.dataset.cleaning.pii.scoreThreshold"),
        ({"entities": ["person", "shoe_size"]}, "spec.dataset.cleaning.pii.entities"),
        ({"entities": []}, "spec.dataset.cleaning.pii.entities"),
        ({"allowList": [""]}, "spec.dataset.cleaning.pii.allowList"),
        ({"colour": "red"}, "spec.dataset.cleaning.pii.colour"),
    ],
)
def test_invalid_pii_settings_name_the_field(tmp_path, pii, path):
    job = write_job(tmp_path, MakeJob.data_stage().spec(dataset={"cleaning": {"pii": pii}}).obj())
    problems = validate_file(job)
    assert problems and all(path in line for line in problems), problems


def test_pii_settings_pass_validation_and_default_keeps_redact_pii_on(tmp_path):
    manifest = MakeJob.data_stage().spec(
        dataset={"cleaning": {"pii": {"mode": "pseudonymize", "allowList": ["Lipitor"]}}}
    )
    assert validate_file(write_job(tmp_path, manifest.obj())) == []
    cleaning = MakeJob.data_stage().typed_spec().dataset.cleaning
    assert cleaning.redact_pii and cleaning.pii.mode == "mask"
    assert "organization" not in cleaning.pii.entities and "person" in cleaning.pii.entities


def test_a_missing_spacy_pipeline_is_a_clear_error_never_a_download(monkeypatch):
    monkeypatch.setenv(MODEL_ENV, "en_core_web_nonexistent")
    with pytest.raises(DataError, match=r"redactPII.*en_core_web_nonexistent"):
        spacy_model_name()


def test_loading_and_redacting_open_no_network_connection(monkeypatch):
    """Nothing leaves the building: no model download, no public-suffix-list fetch."""
    import socket

    from finetune_trainer.data import pii_engine

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    pii_engine.analyzer.cache_clear()  # load spaCy and Presidio again, offline
    redacted, _ = Redactor(api.PiiSpec()).redact_text(
        "Mail bob@example.co.uk or see https://intranet.example.org/ward/7, Anna Berg."
    )
    assert redacted == "Mail <EMAIL> or see <URL>, <PERSON>."


def test_long_documents_are_read_in_pieces_with_every_offset_right(monkeypatch):
    from finetune_trainer.data import pii_engine

    monkeypatch.setattr(pii_engine, "CHUNK_CHARS", 120)
    line = "Seen by Dr. Anna Berg on 03/14/2024, MRN: 48213377. Stable, Lipitor 20 mg.\n"
    document = line * 6  # 460 characters: four or more pieces
    redacted, findings = Redactor(api.PiiSpec()).redact_text(document)
    assert (
        redacted
        == "Seen by Dr. <PERSON> on <DATE>, MRN: <MEDICAL_RECORD_NUMBER>. Stable, Lipitor 20 mg.\n"
        * 6
    )
    assert len(findings) == 18
