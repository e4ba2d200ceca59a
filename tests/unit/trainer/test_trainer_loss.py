"""The chunked loss through the output head: the same loss, accuracy and gradients as
full-vocabulary logits, and the head swap that carries it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from finetune_operator import api
from finetune_trainer.batches import collate, forward_sums
from finetune_trainer.data import prepare_records
from finetune_trainer.loss import (
    CHUNK_BYTES,
    LossHead,
    chunk_tokens,
    install_loss_head,
    linear_cross_entropy,
)
from finetune_trainer.model import apply_method, load_base_model
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob


def problem(dtype=torch.float32, n=37, hidden=16, vocab=50, bias=True):
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, generator=generator).to(dtype).requires_grad_()

    targets = torch.randint(0, vocab, (n,), generator=generator)
    h, w = leaf(n, hidden), leaf(vocab, hidden)
    return h, w, leaf(vocab) if bias else None, targets


def full_logits_reference(h, w, b, targets):
    logits = F.linear(h, w, b).float()
    loss = F.cross_entropy(logits, targets, reduction="sum")
    return loss, int((logits.argmax(-1) == targets).sum())


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
def test_chunked_loss_accuracy_and_gradients_match_full_logits(chunk):
    h, w, b, targets = problem()
    summary = linear_cross_entropy(h, w, b, targets, chunk=chunk)
    (summary[0] * 0.5).backward()  # a scale, as the loop's 1/tokens, reaches every gradient
    chunked = [x.grad.clone() for x in (h, w, b)]
    for x in (h, w, b):
        x.grad = None
    loss, correct = full_logits_reference(h, w, b, targets)
    (loss * 0.5).backward()
    assert summary[0].item() == pytest.approx(loss.item(), rel=1e-6)
    assert summary[1].item() == correct
    for mine, theirs in zip(chunked, (h.grad, w.grad, b.grad), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_accuracy_counts_every_right_argmax():
    h, w, _, _ = problem(bias=False)
    right = F.linear(h, w).argmax(-1)
    wrong = (right + 1) % w.shape[0]
    mixed = torch.where(torch.arange(len(right)) % 3 == 0, right, wrong)
    with torch.no_grad():
        assert linear_cross_entropy(h, w, None, right, chunk=4)[1].item() == len(right)
        assert linear_cross_entropy(h, w, None, wrong, chunk=4)[1].item() == 0
        assert linear_cross_entropy(h, w, None, mixed, chunk=4)[1].item() == (len(right) + 2) // 3


def test_without_grad_nothing_is_kept_for_backward():
    h, w, b, targets = problem()
    with torch.no_grad():
        summary = linear_cross_entropy(h, w, b, targets, chunk=8)
    assert summary.grad_fn is None
    assert summary[0].item() == pytest.approx(full_logits_reference(h, w, b, targets)[0].item())


def test_bf16_gradients_follow_full_logits_and_keep_the_parameters_dtype():
    h, w, _, targets = problem(torch.bfloat16, n=64, vocab=300, bias=False)
    linear_cross_entropy(h, w, None, targets, chunk=16)[0].backward()
    chunked = h.grad.float(), w.grad.float()
    assert w.grad.dtype == torch.bfloat16 and h.grad.dtype == torch.bfloat16
    h.grad = w.grad = None
    full_logits_reference(h, w, None, targets)[0].backward()
    for mine, theirs in zip(chunked, (h.grad.float(), w.grad.float()), strict=True):
        assert torch.allclose(mine, theirs, atol=2e-2, rtol=2e-2)


def test_a_chunk_of_logits_stays_near_the_budget_at_a_large_vocabulary():
    tokens = chunk_tokens(128_256)
    assert tokens * 128_256 * 4 <= CHUNK_BYTES
    assert tokens >= 128  # large enough for the matmul to stay efficient


@pytest.fixture(scope="module")
def rows(workspace):
    spec = MakeJob.trainer().spec(dataset={"maxSeqLength": 256}).typed_spec()
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    return splits.rows["train"][:6]


def tiny(workspace):
    return load_base_model(
        workspace / "model", api.ModelSpec(source="model"), dtype=torch.float32, quantize_4bit=False
    )


def test_the_head_keeps_its_weights_names_ties_and_logits(workspace):
    model = tiny(workspace)
    linear = model.get_output_embeddings()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, linear.in_features)
    expected = linear(x)
    assert install_loss_head(model)
    head = model.get_output_embeddings()
    assert isinstance(head, LossHead) and head.weight is linear.weight
    assert model.state_dict().keys() == before.keys()  # checkpoints load either way
    assert torch.equal(head(x), expected)  # outside a loss request, plain logits
    if model.config.tie_word_embeddings:
        assert head.weight is model.get_input_embeddings().weight


def test_lora_on_the_output_head_keeps_full_logits_with_the_same_loss(workspace, rows):
    method = api.MethodSpec(type="lora", lora={"targetModules": ["q_proj", "lm_head"]})
    model = apply_method(tiny(workspace), method, gradient_checkpointing=False)
    assert not install_loss_head(model)  # a LoRA layer, not a plain Linear
    batch = collate(rows, 0, torch.float32)
    full_loss, tokens, full_correct, _ = forward_sums(model, batch)
    plain = apply_method(tiny(workspace), api.MethodSpec(type="full"), gradient_checkpointing=False)
    assert install_loss_head(plain)
    # LoRA starts as the identity (B = 0), so both models still compute the same function.
    chunked_loss, chunked_tokens, chunked_correct, _ = forward_sums(plain, batch)
    assert tokens == chunked_tokens > 0
    assert chunked_loss.item() == pytest.approx(full_loss.item(), rel=1e-5)
    assert chunked_correct.item() == full_correct.item()
