"""Direct Preference Optimization: the loss, the reference model, a training step, evaluation.

A batch row is one preference pair (data/pairs.py): the chosen conversation, then the
rejected one. Each answer's log-probability is the sum over its labelled tokens, taken
through the LossHead per token (no full-vocabulary logits), under the model being trained
(the policy) and under the reference:

- lora/qlora: the reference is the base model, which is this same model with its adapter
  disabled (peft's `disable_adapter()`): no second copy of the weights, and nothing to
  save or restore on resume, since the base weights never change.
- full: a frozen copy of the base model, loaded once per rank beside the trained one. It
  costs one more model's weights per device (not partitioned: the API refuses objective
  dpo with type full under ZeRO-3); it is rebuilt from the base model on resume.

The loss follows TRL's DPOTrainer (1.x), the numerical reference its tests match to 1e-5:
rewards are beta x (policy - reference) log-ratios; `sigmoid` is DPO, `robust` DPO with a
flipped-label probability (labelSmoothing), `ipo` IPO's squared loss on log-ratios
averaged over each answer's tokens. TRL keeps the loss inside `DPOTrainer._compute_loss`,
which needs a whole trainer, its accelerator and its model wrapper; our loop has its own
DeepSpeed engine and batches, so the formulas are written out here (a dozen lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from finetune_operator import api

from finetune_trainer.batches import collate, model_inputs
from finetune_trainer.data.packing import Row
from finetune_trainer.evaluate import eval_batches
from finetune_trainer.loss import LossRequest, find_loss_head
from finetune_trainer.prefetch import HostBatches

# What every pair contributes, averaged over pairs: the history's names (eval_ and test_
# prefixed for validation and test); TRL logs them as rewards/accuracies, rewards/margins...
STATS = ("loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward",
         "chosen_logp", "rejected_logp")  # fmt: skip


@dataclass(frozen=True)
class PreferenceLoss:
    beta: float
    loss_type: str  # sigmoid | ipo | robust
    label_smoothing: float = 0.0

    def __call__(
        self, policy: torch.Tensor, reference: torch.Tensor, answer_tokens: torch.Tensor
    ) -> torch.Tensor:
        """(pairs, len(STATS)): each pair's loss (differentiable) and its statistics, from
        the sequences' log-probs laid out [chosen 0, rejected 0, chosen 1, ...]."""
        chosen, rejected = policy[0::2], policy[1::2]
        losses, chosen_rewards, rejected_rewards = preference_losses(
            chosen, rejected, reference[0::2], reference[1::2],
            beta=self.beta, loss_type=self.loss_type, label_smoothing=self.label_smoothing,
            chosen_tokens=answer_tokens[0::2], rejected_tokens=answer_tokens[1::2],
        )  # fmt: skip
        statistics = [
            (chosen_rewards > rejected_rewards).float(),
            chosen_rewards - rejected_rewards,
            chosen_rewards,
            rejected_rewards,
            chosen.detach(),
            rejected.detach(),
        ]
        return torch.stack([losses, *statistics], dim=1)


def preference_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str,
    label_smoothing: float = 0.0,
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair loss, chosen rewards, rejected rewards) as TRL's DPOTrainer computes them;
    ipo needs each answer's token count."""
    chosen_ratios = chosen_logps - ref_chosen_logps
    rejected_ratios = rejected_logps - ref_rejected_logps
    delta = chosen_ratios - rejected_ratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1 - 2 * label_smoothing)
    elif loss_type == "ipo":
        assert chosen_tokens is not None and rejected_tokens is not None
        # Per-token log ratios: the squared loss would otherwise grow with answer length.
        per_token = chosen_ratios / chosen_tokens.clamp(min=1) - rejected_ratios / (
            rejected_tokens.clamp(min=1)
        )
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}")
    return losses, beta * chosen_ratios.detach(), beta * rejected_ratios.detach()


def with_pair_index(batch: dict[str, Any]) -> dict[str, Any]:
    """A collated batch of pair rows, plus which sequence each loss token belongs to
    (2 x row, + 1 for the rejected answer) and each sequence's answer tokens (host side)."""
    position_ids = batch["position_ids"]
    pairs, length = position_ids.shape
    # The rejected conversation starts where the position ids restart; padding comes after.
    starts = (position_ids[:, 1:] == 0).int().argmax(dim=1) + 1
    positions = batch["loss_positions"]
    rows, columns = positions // length, positions % length
    # Target (row, column) is the token at column + 1.
    sequence = 2 * rows + (columns + 1 >= starts[rows]).long()
    answer_tokens = torch.bincount(sequence, minlength=2 * pairs).float()
    return batch | {"loss_sequence": sequence, "answer_tokens": answer_tokens, "pairs": pairs}


def collate_pairs(rows: list[Row], pad_token_id: int, dtype: torch.dtype) -> dict[str, Any]:
    return with_pair_index(collate(rows, pad_token_id, dtype))


def sequence_log_probs(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Each sequence's summed log-probability of its answer tokens, (2 x pairs,) in fp32."""
    request = LossRequest(batch["loss_positions"], batch["loss_targets"], per_token=True)
    head = find_loss_head(model)
    if head is not None:
        with head.computing_loss(request):
            token_logps = model(**model_inputs(model, batch), use_cache=False).logits
    else:  # a model whose head returns logits: the full-vocabulary path
        logits = model(**model_inputs(model, batch), use_cache=False).logits
        picked = logits.reshape(-1, logits.shape[-1]).index_select(0, request.positions).float()
        token_logps = picked.log_softmax(-1).gather(1, request.targets.unsqueeze(1)).squeeze(1)
    sums = torch.zeros(2 * batch["pairs"], dtype=torch.float32, device=token_logps.device)
    return sums.index_add(0, batch["loss_sequence"], token_logps.float())


class AdapterReference:
    """lora/qlora: the reference is the trained model with its adapter switched off."""

    def log_probs(self, engine: Any, batch: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad(), adapter_disabled(engine):
            return sequence_log_probs(engine, batch)


@contextmanager
def adapter_disabled(engine: Any) -> Iterator[None]:
    """peft's disable_adapter() on the model inside a DeepSpeed engine (or a bare model)."""
    model = getattr(engine, "module", engine)
    with model.disable_adapter():
        yield


@dataclass
class FrozenReference:
    """full: a frozen copy of the base model beside the trained one."""

    model: Any

    def log_probs(self, engine: Any, batch: dict[str, Any]) -> torch.Tensor:
        with torch.no_grad():
            return sequence_log_probs(self.model, batch)


@dataclass
class PreferenceObjective:
    """What the loop calls instead of the token loss when method.objective is dpo."""

    loss: PreferenceLoss
    reference: AdapterReference | FrozenReference

    def on_host(self, host: HostBatches) -> HostBatches:
        """A step's collated batches with their pair index (runs on the prefetch thread)."""
        return replace(host, batches=[with_pair_index(batch) for batch in host.batches])

    def step(
        self, engine: Any, host: HostBatches, device: torch.device
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One optimizer step: (mean pair loss, the other STATS' means, non-padding tokens,
        loss tokens), global over ranks, as device tensors (nothing waits for the device).

        The step's gradient is that of the mean loss over the global batch's pairs; as in
        the token loss, `scale` undoes DeepSpeed's division by accumulation steps and its
        average over ranks."""
        batches = host.to(device)
        pairs = sum(int(batch["pairs"]) for batch in host.batches)
        counts = torch.tensor([pairs, host.tokens, host.loss_tokens], dtype=torch.float64)
        counts = counts.to(device)
        dist.all_reduce(counts)
        scale = len(batches) * dist.get_world_size() / counts[0].clamp(min=1.0)
        totals = torch.zeros(len(STATS), dtype=torch.float64, device=device)
        for batch in batches:
            reference = self.reference.log_probs(engine, batch)  # first: it keeps no graph
            per_pair = self.loss(sequence_log_probs(engine, batch), reference,
                                 batch["answer_tokens"])  # fmt: skip
            summed = per_pair[:, 0].sum()
            engine.backward(summed * scale.to(summed.dtype))
            engine.step()
            totals += per_pair.detach().double().sum(0)
        dist.all_reduce(totals)
        means = totals / counts[0].clamp(min=1.0)
        stats = {name: means[i] for i, name in enumerate(STATS) if name != "loss"}
        return means[0], stats, counts[1], counts[2]

    @torch.no_grad()
    def evaluate(
        self,
        engine: Any,
        splits: dict[str, list[Row]],
        *,
        micro: int,
        pad_token_id: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> dict[str, dict[str, float]]:
        """The STATS' means for each split over all ranks, in one pass; {} for an empty
        split. Collective, like evaluate.evaluate_losses."""
        was_training = engine.training
        engine.eval()
        totals = torch.zeros((len(splits), len(STATS) + 1), dtype=torch.float64, device=device)
        batches = eval_batches(
            splits, lambda rows: collate_pairs(rows, pad_token_id, dtype), micro=micro,
            device=device,
        )  # fmt: skip
        for index, batch, counted in batches:
            reference = self.reference.log_probs(engine, batch)
            per_pair = self.loss(sequence_log_probs(engine, batch), reference,
                                 batch["answer_tokens"])  # fmt: skip
            if counted:
                totals[index, :-1] += per_pair.double().sum(0)
                totals[index, -1] += per_pair.shape[0]
        dist.all_reduce(totals)
        engine.train(was_training)
        return {name: _means(totals[i].tolist()) for i, name in enumerate(splits)}


def _means(sums: list[float]) -> dict[str, float]:
    *values, pairs = sums
    return {k: v / pairs for k, v in zip(STATS, values, strict=True)} if pairs else {}


def train_summary(recent: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """train_<stat> for metrics.json: the mean over the last logged steps, as train_loss."""
    if not recent:
        return {}
    names = recent[0].keys()
    return {f"train_{k}": sum(float(row[k]) for row in recent) / len(recent) for k in names}


def objective_for(
    spec: api.FineTuneJobSpec, model_dir: Any, device: torch.device, dtype: torch.dtype
) -> PreferenceObjective | None:
    """The DPO objective of a job (None for sft), its reference model loaded when full."""
    method = spec.method
    if method.objective != "dpo":
        return None
    loss = PreferenceLoss(method.dpo.beta, method.dpo.loss_type, method.dpo.label_smoothing)
    if method.type != "full":
        return PreferenceObjective(loss, AdapterReference())
    return PreferenceObjective(
        loss, FrozenReference(load_reference(spec, model_dir, device, dtype))
    )


def load_reference(
    spec: api.FineTuneJobSpec, model_dir: Any, device: torch.device, dtype: torch.dtype
) -> Any:
    """The base model, frozen, in evaluation mode, with the per-token LossHead."""
    from finetune_trainer.loss import install_loss_head
    from finetune_trainer.model import load_base_model

    model = load_base_model(model_dir, spec.model, dtype=dtype, quantize_4bit=False)
    install_loss_head(model)
    return model.to(device).eval().requires_grad_(False)
