"""Batches of packed rows: padding, token counts and the packing-isolation proof."""

from __future__ import annotations

import pytest
import torch
from finetune_trainer.data import build_rows, collate_rows
from finetune_trainer.data.tokenize import IGNORE_INDEX

from tests.factories import MakeJob
from tests.records import chat


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model.eval()


def rows_for(tokenizer, records, *, packing, max_len=256):
    dataset = (
        MakeJob.data_stage()
        .spec(dataset={"maxSeqLength": max_len, "packing": packing})
        .typed_spec()
        .dataset
    )
    rows, _ = build_rows(records, "messages", tokenizer, dataset)
    return rows


def logits(model, batch, attention="sdpa"):
    model.config._attn_implementation = attention
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).logits


A = chat("What is the capital of Norway?", "The capital of Norway is Oslo.")
B = chat("Reverse the word piano.", "piano reversed is onaip.")


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_documents_do_not_see_each_other(tiny_tokenizer, tiny_model, attention):
    pad = tiny_tokenizer.pad_token_id
    alone_a = collate_rows(rows_for(tiny_tokenizer, [A], packing=False), pad)
    alone_b = collate_rows(rows_for(tiny_tokenizer, [B], packing=False), pad)
    packed_rows = rows_for(tiny_tokenizer, [A, B], packing=True)
    assert len(packed_rows) == 1  # both documents share one row
    packed = collate_rows(packed_rows, pad)
    ids = packed["input_ids"][0].tolist()
    len_a, len_b = alone_a["input_ids"].shape[1], alone_b["input_ids"].shape[1]
    # Packing puts the longer document first; find each document's slice in the row.
    first, second = (
        (alone_a, alone_b)
        if ids[:len_a] == alone_a["input_ids"][0].tolist()
        else (alone_b, alone_a)
    )
    n_first = first["input_ids"].shape[1]
    packed_logits = logits(tiny_model, packed, attention)[0]
    first_logits = logits(tiny_model, first, attention)[0]
    second_logits = logits(tiny_model, second, attention)[0]
    assert len_a + len_b == len(ids)
    assert torch.allclose(packed_logits[:n_first], first_logits, atol=1e-5)
    # The second document would see the first one if attention crossed documents.
    assert torch.allclose(packed_logits[n_first:], second_logits, atol=1e-5)


def test_a_plain_padding_mask_would_leak_across_documents(tiny_tokenizer, tiny_model):
    """The isolation proof is sensitive: without the block mask the logits do change."""
    pad = tiny_tokenizer.pad_token_id
    packed = collate_rows(rows_for(tiny_tokenizer, [A, B], packing=True), pad)
    n_first = packed["position_ids"][0].tolist().index(0, 1)
    second_alone = collate_rows(
        [{k: v[n_first:] for k, v in rows_for(tiny_tokenizer, [A, B], packing=True)[0].items()}],
        pad,
    )
    leaky = dict(packed, attention_mask=torch.ones_like(packed["input_ids"]))
    leaked = logits(tiny_model, leaky)[0, n_first:]
    assert not torch.allclose(leaked, logits(tiny_model, second_alone)[0], atol=1e-3)


def test_padding_is_ignored_and_counted(tiny_tokenizer, tiny_model):
    pad = tiny_tokenizer.pad_token_id
    rows = rows_for(tiny_tokenizer, [A, chat("Hi?", "Hello.")], packing=False)
    batch = collate_rows(rows, pad)
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].shape == (2, 1, max(lengths), max(lengths))
    assert int(batch["num_tokens"]) == sum(lengths)
    expected_loss = sum(sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows)
    assert int(batch["num_loss_tokens"]) == expected_loss
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths) :] == IGNORE_INDEX).all()
    # Padded rows give the same logits as the row alone, and no NaN anywhere.
    out = logits(tiny_model, batch)
    assert not torch.isnan(out).any()
    alone = logits(tiny_model, collate_rows([rows[short]], pad))[0]
    assert torch.allclose(out[short, : min(lengths)], alone, atol=1e-5)
    # The loss transformers computes from this batch is finite.
    loss = tiny_model(
        **{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}
    ).loss
    assert torch.isfinite(loss)


def test_mask_in_bf16_works_with_a_bf16_model(tiny_tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    batch = collate_rows(
        rows_for(tiny_tokenizer, [A, B], packing=True),
        tiny_tokenizer.pad_token_id,
        mask_dtype=torch.bfloat16,
    )
    assert torch.isfinite(logits(model, batch).float()).all()
