"""Our DPO loss against TRL's DPOTrainer, the reference implementation, on the same batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from finetune_trainer import dpo
from finetune_trainer.data.pairs import pair_row
from finetune_trainer.data.tokenize import IGNORE_INDEX, Document
from finetune_trainer.loss import install_loss_head

from tests.unit.trainer.test_trainer_dpo import separable_preferences

LOSSES = [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.2)]


def our_rows(batch: dict, pad: int) -> dict:
    """TRL's batch ([chosen x B, rejected x B], padded) as our pair rows, collated."""
    ids, attention, completion = (
        batch["input_ids"],
        batch["attention_mask"],
        batch["completion_mask"],
    )
    pairs = ids.shape[0] // 2

    def document(i: int) -> Document:
        keep = attention[i].bool()
        tokens, learn = ids[i][keep].tolist(), completion[i][keep].tolist()
        return Document(
            tokens, [t if c else IGNORE_INDEX for t, c in zip(tokens, learn, strict=True)]
        )

    rows = [pair_row(document(i), document(pairs + i)) for i in range(pairs)]
    return dpo.collate_pairs(rows, pad, torch.float32)


def test_loss_matches_trls_dpo_trainer_on_the_same_batch(workspace: Path, tmp_path: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(workspace / "model")
    reference = AutoModelForCausalLM.from_pretrained(workspace / "model").eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(0)
    with torch.no_grad():  # a policy that has moved away from its reference
        for parameter in policy.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    # Ours: the same weights behind the per-token LossHead.
    ours = {"policy": copy.deepcopy(policy), "reference": copy.deepcopy(reference)}
    for model in ours.values():
        assert install_loss_head(model)
    records = separable_preferences(6)
    for loss_type, smoothing in LOSSES:
        config = DPOConfig(
            output_dir=str(tmp_path / loss_type), per_device_train_batch_size=6, report_to=[],
            beta=0.3, loss_type=[loss_type], label_smoothing=smoothing, use_cpu=True,
            bf16=False, fp16=False, gradient_checkpointing=False,
        )  # fmt: skip
        trainer = DPOTrainer(
            model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference), args=config,
            train_dataset=Dataset.from_list(records), processing_class=tokenizer,
        )  # fmt: skip
        batch = next(iter(trainer.get_train_dataloader()))
        trl_loss = trainer.compute_loss(trainer.model, batch).item()
        collated = our_rows(batch, tokenizer.pad_token_id)
        with torch.no_grad():
            per_pair = dpo.PreferenceLoss(0.3, loss_type, smoothing)(
                dpo.sequence_log_probs(ours["policy"], collated),
                dpo.sequence_log_probs(ours["reference"], collated),
                collated["answer_tokens"],
            )
        assert per_pair.shape == (6, len(dpo.STATS))
        assert per_pair[:, 0].mean().item() == pytest.approx(trl_loss, abs=1e-5), loss_type
        assert trl_loss > 0.01  # the two models differ: not a trivial match at zero
