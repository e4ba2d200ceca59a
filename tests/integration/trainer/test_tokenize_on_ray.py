"""Tokenising on Ray tasks gives the driver's rows exactly: the same order, ids, labels and
positions, and the same report counts, for SFT and DPO under every over-length policy."""

from __future__ import annotations

import pytest
from finetune_trainer.data import build_rows
from finetune_trainer.data.formats import check_record
from finetune_trainer.data.pairs import build_pairs
from finetune_trainer.data.tokenize_on_ray import (
    MIN_PARALLEL_RECORDS,
    build_pairs_on_ray,
    build_rows_on_ray,
    parallel_workers,
)
from finetune_trainer.errors import DataError
from finetune_trainer.model import load_tokenizer

from tests.factories import MakeJob
from tests.records import chat

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tokenizer(workspace):
    return load_tokenizer(workspace / "model", MakeJob.trainer().typed_spec().model)


def dataset_of(**dataset):
    return MakeJob.trainer().spec(dataset=dataset).typed_spec().dataset


def sft_records() -> list[dict]:
    """Short and long chats, one whose answer a truncation cuts away entirely, and one
    with a system turn, so the policies truncate, chunk and drop among ordinary records."""
    records = [chat(f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}. " * (i % 9 + 1))
               for i in range(90)]  # fmt: skip
    records[10] = chat("Count, please.", " ".join(str(i) for i in range(1, 120)))
    records[41] = chat(" ".join(["word"] * 200), "ok")  # only prompt survives a truncation
    records[77] = chat("Hi?", "Hello.", system="Be brief.")
    return records


@pytest.mark.parametrize("policy", ["truncate", "drop", "chunk"])
@pytest.mark.parametrize("packing", [True, False])
def test_sft_rows_equal_the_drivers_for_any_chunking(local_ray, tokenizer, policy, packing):
    dataset = dataset_of(maxSeqLength=64, packing=packing, cleaning={"overlength": policy})
    records = sft_records()
    expected = build_rows(records, "messages", tokenizer, dataset)
    assert sum(expected[1]["overlength"].values()) >= 2  # the over-long records did count
    for workers, chunk_records in ((2, 7), (3, 1), (2, 1000)):
        got = build_rows_on_ray(
            records, "messages", tokenizer, dataset, workers=workers, chunk_records=chunk_records
        )
        assert got == expected


def test_text_records_equal_the_drivers(local_ray, tokenizer):
    dataset = dataset_of(maxSeqLength=32, cleaning={"overlength": "chunk"})
    records = [{"text": f"Line {i}: " + "more words " * (i % 13)} for i in range(40)]
    expected = build_rows(records, "text", tokenizer, dataset)
    assert build_rows_on_ray(records, "text", tokenizer, dataset, workers=2, chunk_records=6) == (
        expected
    )


def raw_preferences() -> list[dict]:
    records = [
        {"prompt": f"Name a colour ({i})", "chosen": f"Blue, {i}. " * (i % 7 + 1),
         "rejected": f"No, {i}."}
        for i in range(50)
    ]  # fmt: skip
    records[5] = {"prompt": "Short?", "chosen": "Yes. " * 30, "rejected": "No."}  # truncated
    records[23] = {"prompt": "word " * 200, "chosen": "Yes.", "rejected": "No."}  # cut away
    records[31] = {  # a conversation: its own earlier answer is context, not learned
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "A colour?"},
        ],
        "chosen": [{"role": "assistant", "content": "Green."}],
        "rejected": [{"role": "assistant", "content": "No."}],
    }
    return records


def preference_records() -> list[dict]:
    return [check_record(record, "preference") for record in raw_preferences()]


@pytest.mark.parametrize("policy", ["truncate", "drop"])
def test_dpo_pairs_equal_the_drivers(local_ray, tokenizer, policy):
    dataset = dataset_of(maxSeqLength=48, cleaning={"overlength": policy})
    records = preference_records()
    expected = build_pairs(records, tokenizer, dataset)
    assert sum(expected[1]["overlength"].values()) >= 2
    got = build_pairs_on_ray(records, tokenizer, dataset, workers=2, chunk_records=4)
    assert got == expected


def test_a_record_the_template_rejects_fails_as_on_the_driver(local_ray, tokenizer):
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    dataset = dataset_of(chatTemplate=template)
    records = sft_records()  # record 77 has a system turn, in the tasks' last chunks
    with pytest.raises(DataError) as on_driver:
        build_rows(records, "messages", tokenizer, dataset)
    with pytest.raises(DataError) as on_ray:
        build_rows_on_ray(records, "messages", tokenizer, dataset, workers=2, chunk_records=10)
    assert str(on_ray.value) == str(on_driver.value)
    assert "System role not supported" in str(on_ray.value)


def test_large_splits_go_to_every_cpu_small_ones_stay(local_ray, monkeypatch):
    monkeypatch.delenv("FINETUNE_DATA_WORKERS", raising=False)
    assert parallel_workers(MIN_PARALLEL_RECORDS) == 2  # local_ray has two CPUs
    assert parallel_workers(MIN_PARALLEL_RECORDS - 1) is None
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "0")
    assert parallel_workers(10 * MIN_PARALLEL_RECORDS) is None
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "1")  # one task would only add shipping
    assert parallel_workers(10 * MIN_PARALLEL_RECORDS) is None
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "8")  # never more tasks than CPUs
    assert parallel_workers(10 * MIN_PARALLEL_RECORDS) == 2


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_a_runs_large_training_split_is_tokenised_on_ray(
    local_ray, workspace, tmp_path, monkeypatch, objective
):
    import json

    from finetune_trainer import rows
    from finetune_trainer.data import prepare_records

    job = MakeJob.trainer().spec(hyperparameters={"batchSize": 2})
    if objective == "dpo":
        (tmp_path / "model").symlink_to(workspace / "model")
        lines = [json.dumps(record) + "\n" for record in raw_preferences()]
        (tmp_path / "prefs.jsonl").write_text("".join(lines))
        job = job.train("prefs.jsonl", fmt="preference").spec(method={"objective": "dpo"})
    folder = tmp_path if objective == "dpo" else workspace
    spec = job.typed_spec()
    prepared = prepare_records(spec, base_dir=folder)
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "0")
    in_driver = rows.tokenize_splits(prepared, spec, folder / "model")
    monkeypatch.delenv("FINETUNE_DATA_WORKERS")
    monkeypatch.setattr("finetune_trainer.data.tokenize_on_ray.MIN_PARALLEL_RECORDS", 30)
    sent = []

    def counted(tokenise):
        def sending(records, *args, **kwargs):
            sent.append(len(records))
            return tokenise(records, *args, **kwargs)

        return sending

    monkeypatch.setattr(rows, "build_rows_on_ray", counted(build_rows_on_ray))
    monkeypatch.setattr(rows, "build_pairs_on_ray", counted(build_pairs_on_ray))
    on_ray = rows.tokenize_splits(prepared, spec, folder / "model")
    assert sent == [len(prepared.train)]  # the small validation and test splits stayed
    assert on_ray.rows == in_driver.rows and on_ray.stats == in_driver.stats
