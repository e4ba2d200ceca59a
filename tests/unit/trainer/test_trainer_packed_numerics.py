"""Acceptance: packed attention and the chunked loss leave a fixed tiny run's numbers as
they were with the dense document mask and full fp32 logits (fp32, CPU, to 1e-4)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from finetune_operator import api
from finetune_trainer.attention import (
    FLEX_DOCUMENTS,
    SDPA_DOCUMENTS,
    dense_document_mask,
    use_packed_attention,
)
from finetune_trainer.batches import collate, forward_sums, shifted_targets
from finetune_trainer.data import prepare_records
from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.loss import install_loss_head
from finetune_trainer.model import apply_method, load_base_model
from finetune_trainer.rows import tokenize_splits

from tests.factories import MakeJob

STEPS, MICRO = 4, 4
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def rows(workspace):
    spec = MakeJob.trainer().spec(dataset={"maxSeqLength": 256}).typed_spec()
    splits = tokenize_splits(prepare_records(spec, base_dir=workspace), spec, workspace / "model")
    rows = splits.rows["train"][: STEPS * MICRO]
    # Packed rows with several documents each, or the proof proves nothing.
    assert sum(row["position_ids"].count(0) > 1 for row in rows) >= len(rows) // 2
    return rows


def fresh_model(workspace, method="full"):
    torch.manual_seed(0)  # LoRA's initialisation
    base = load_base_model(
        workspace / "model", api.ModelSpec(source="model"), dtype=torch.float32, quantize_4bit=False
    )
    return base, apply_method(base, api.MethodSpec(type=method), gradient_checkpointing=True)


def todays_mean_loss(model, batch):
    """The loss as computed before packed attention: the dense (B,1,L,L) mask and fp32
    logits over the whole vocabulary for every position."""
    logits = (
        model(
            input_ids=batch["input_ids"],
            attention_mask=dense_document_mask(batch["packed_documents"], torch.float32),
            position_ids=batch["position_ids"],
            use_cache=False,
        )
        .logits[:, :-1]
        .float()
    )
    targets = shifted_targets(batch)
    loss_sum = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX,
        reduction="sum",
    )  # fmt: skip
    return loss_sum / (targets != IGNORE_INDEX).sum()


def packed_mean_loss(model, batch):
    loss_sum, tokens, _, _ = forward_sums(model, batch)
    return loss_sum / tokens


def run(model, rows, mean_loss):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(STEPS):
        batch = collate(rows[step * MICRO : (step + 1) * MICRO], 0, torch.float32)
        loss = mean_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_tiny_runs_losses_match_the_dense_mask_and_full_logits(workspace, rows, method):
    _, model = fresh_model(workspace, method)
    today = run(model.train(), rows, todays_mean_loss)
    base, model = fresh_model(workspace, method)
    assert use_packed_attention(base, SDPA_DOCUMENTS) and install_loss_head(model)
    packed = run(model.train(), rows, packed_mean_loss)
    assert today[-1] < today[0]  # it trains, so later steps compare updated weights too
    assert packed == pytest.approx(today, abs=TOLERANCE)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
def test_flex_attentions_evaluation_loss_matches_the_dense_mask(workspace, rows):
    """FlexAttention has no backward on CPU: its forward is what can be checked here."""
    base, model = fresh_model(workspace)
    batch = collate(rows[:MICRO], 0, torch.float32)
    with torch.no_grad():
        today = todays_mean_loss(model.eval(), batch).item()
        assert use_packed_attention(base, FLEX_DOCUMENTS) and install_loss_head(model)
        assert packed_mean_loss(model, batch).item() == pytest.approx(today, abs=TOLERANCE)
