"""Batches of packed rows: padding, token counts and the packing-isolation proof, on the
dense-mask reference and on every packed attention kernel that runs on a CPU."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from finetune_trainer import attention as attn
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


def reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p, softmax_scale, causal):
    """flash_attn_varlen_func's contract, (total, H, D) in and out, from plain SDPA on each
    cu_seqlens segment: it proves our flattening and edges where flash_attn is absent."""
    assert causal and max_q == max(b - a for a, b in itertools.pairwise(cu_q.tolist()))
    out = torch.empty_like(q)
    for a, b in itertools.pairwise(cu_q.tolist()):
        segment = [x[a:b].transpose(0, 1) for x in (q, k, v)]
        out[a:b] = F.scaled_dot_product_attention(
            *segment, is_causal=True, scale=softmax_scale
        ).transpose(0, 1)
    return out


DENSE = ("sdpa", "eager")  # transformers' own kernels with the (B,1,L,L) mask
PACKED = (attn.SDPA_DOCUMENTS, attn.FLEX_DOCUMENTS, attn.FLASH_VARLEN)


def logits(model, batch, attention="sdpa"):
    """The model's logits with `attention`: a dense mask for transformers' kernels, the
    packed documents (and no mask) for ours."""
    extra = {}
    if attention in DENSE:
        model.config._attn_implementation = attention
        mask = batch.get("attention_mask")
        if mask is None:
            mask = attn.dense_document_mask(batch["packed_documents"], torch.float32)
        extra["attention_mask"] = mask
    else:
        assert attn.use_packed_attention(model, attention)
        extra["packed_documents"] = batch["packed_documents"]
        if attention == attn.FLASH_VARLEN:
            extra["varlen_kernel"] = reference_varlen
    try:
        with torch.no_grad():
            return model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], **extra
            ).logits
    finally:
        model.config._attn_implementation = "sdpa"


A = chat("What is the capital of Norway?", "The capital of Norway is Oslo.")
B = chat("Reverse the word piano.", "piano reversed is onaip.")


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
@pytest.mark.parametrize("attention", DENSE + PACKED)
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
    # Likewise a packed kernel told the row is one document.
    length = packed["input_ids"].shape[1]
    one_document = attn.PackedDocuments.from_rows([list(range(length))], length)
    leaky = dict(packed, packed_documents=one_document)
    assert not torch.allclose(
        logits(tiny_model, leaky, attn.SDPA_DOCUMENTS)[0, n_first:],
        logits(tiny_model, second_alone)[0],
        atol=1e-3,
    )
    assert not torch.allclose(leaked, logits(tiny_model, second_alone)[0], atol=1e-3)


@pytest.mark.parametrize("attention", ["sdpa", attn.SDPA_DOCUMENTS])
def test_padding_is_ignored_and_counted(tiny_tokenizer, tiny_model, attention):
    pad = tiny_tokenizer.pad_token_id
    rows = rows_for(tiny_tokenizer, [A, chat("Hi?", "Hello.")], packing=False)
    batch = collate_rows(rows, pad)
    lengths = [len(r["input_ids"]) for r in rows]
    assert batch["input_ids"].shape == (2, max(lengths))
    # No LxL mask unless asked for: the padding is one more segment of its row.
    assert "attention_mask" not in batch
    assert batch["packed_documents"].lengths[lengths.index(min(lengths))] == [
        min(lengths),
        max(lengths) - min(lengths),
    ]
    dense = collate_rows(rows, pad, dense_mask_dtype=torch.float32)["attention_mask"]
    assert dense.shape == (2, 1, max(lengths), max(lengths))
    assert int(batch["num_tokens"]) == sum(lengths)
    expected_loss = sum(sum(label != IGNORE_INDEX for label in r["labels"]) for r in rows)
    assert int(batch["num_loss_tokens"]) == expected_loss
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths) :] == IGNORE_INDEX).all()
    # Padded rows give the same logits as the row alone, and no NaN anywhere.
    out = logits(tiny_model, batch, attention)
    assert not torch.isnan(out).any()
    alone = logits(tiny_model, collate_rows([rows[short]], pad), attention)[0]
    assert torch.allclose(out[short, : min(lengths)], alone, atol=1e-5)
    # The loss transformers computes from this batch is finite.
    loss = tiny_model(
        input_ids=batch["input_ids"],
        attention_mask=dense,
        position_ids=batch["position_ids"],
        labels=batch["labels"],
    ).loss
    assert torch.isfinite(loss)


@pytest.mark.parametrize("attention", ["sdpa", attn.SDPA_DOCUMENTS])
def test_a_bf16_model_gives_finite_logits(tiny_tokenizer, tiny_model_dir, attention):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    batch = collate_rows(
        rows_for(tiny_tokenizer, [A, B], packing=True),
        tiny_tokenizer.pad_token_id,
        dense_mask_dtype=torch.bfloat16,
    )
    assert torch.isfinite(logits(model, batch, attention).float()).all()
