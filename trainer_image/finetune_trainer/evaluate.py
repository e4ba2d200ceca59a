"""Validation and test evaluation: loss, perplexity, token accuracy and generation metrics.

Every function here is collective: all ranks call it, each on its shard, and the sums
are all-reduced so rank 0 and the others agree on the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from finetune_operator import api

from finetune_trainer.batches import collate, forward_sums, shard_for_eval, to_device
from finetune_trainer.data import build_rows
from finetune_trainer.data.formats import Record
from finetune_trainer.data.packing import Row
from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.prefetch import ahead, pin_batch

GENERATION_METRICS = ("exact_match", "bleu", "rouge", "f1")
MAX_NEW_TOKENS = 256


def evaluate_loss(
    model: Any,
    rows: list[Row],
    *,
    micro: int,
    pad_token_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, float]:
    """Mean token loss, perplexity and next-token accuracy over `rows` on all ranks."""
    return evaluate_losses(
        model, {"rows": rows}, micro=micro, pad_token_id=pad_token_id, device=device, dtype=dtype
    )["rows"]


@torch.no_grad()
def evaluate_losses(
    model: Any,
    splits: dict[str, list[Row]],
    *,
    micro: int,
    pad_token_id: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, dict[str, float]]:
    """evaluate_loss for each split, in one pass with one all-reduce; {} for an empty split.

    The sums stay on the device until the end; the next micro batch is collated on a
    background thread meanwhile (prefetch.ahead)."""
    was_training = model.training
    model.eval()
    totals = torch.zeros((len(splits), 3), dtype=torch.float64, device=device)
    batches = eval_batches(
        splits, lambda rows: collate(rows, pad_token_id, dtype), micro=micro, device=device
    )
    for index, batch, counted in batches:
        loss_sum, tokens, correct, _ = forward_sums(model, batch)
        if counted:
            totals[index, 0] += loss_sum.detach().double()
            totals[index, 1] += tokens
            totals[index, 2] += correct
    dist.all_reduce(totals)
    model.train(was_training)
    return {name: _scores(*totals[i].tolist()) for i, name in enumerate(splits)}


def eval_batches(
    splits: dict[str, list[Row]],
    collate_rows: Callable[[list[Row]], dict[str, Any]],
    *,
    micro: int,
    device: torch.device,
) -> Iterator[tuple[int, dict[str, Any], bool]]:
    """This rank's micro batches of every split, on the device: (split index, batch,
    counted). The next batch is collated (and pinned on CUDA) on a background thread
    meanwhile (prefetch.ahead). A rank with no rows left still gets a batch, not counted:
    every rank must run each forward pass, since ZeRO-3 gathers the weights collectively."""
    rank, world = dist.get_rank(), dist.get_world_size()
    pin = device.type == "cuda"

    def load(item: tuple[int, list[Row], list[Row] | None]) -> tuple[int, dict[str, Any], bool]:
        index, rows, batch_rows = item
        batch = collate_rows(batch_rows or rows[:1])
        return index, pin_batch(batch) if pin else batch, batch_rows is not None

    work = [
        (index, rows, batch_rows)
        for index, rows in enumerate(splits.values())
        for batch_rows in shard_for_eval(rows, micro=micro, rank=rank, world_size=world)
    ]
    for index, batch, counted in ahead(work, load):
        yield index, to_device(batch, device), counted


def _scores(loss_sum: float, tokens: float, correct: float) -> dict[str, float]:
    if tokens == 0:
        return {}
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / tokens}


def generation_samples(
    records: list[Record], fmt: str, tokenizer: Any, dataset: api.DatasetSpec, limit: int
) -> list[dict[str, Any]]:
    """(prompt token ids, reference text) per test record, rendered exactly as in training:
    the prompt is what carries no loss, the reference what does."""
    unpacked = dataset.model_copy(update={"packing": False, "train_on_prompt": False})
    samples: list[dict[str, Any]] = []
    for record in records:
        if len(samples) >= limit:
            break
        rows, _ = build_rows([record], fmt, tokenizer, unpacked)
        if not rows:
            continue
        ids, labels = rows[0]["input_ids"], rows[0]["labels"]
        first = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)
        if not first:  # no prompt (plain text) or nothing to predict
            continue
        reference = tokenizer.decode(ids[first:], skip_special_tokens=True).strip()
        samples.append(
            {
                "prompt_ids": ids[:first],
                "reference": reference,
                "reference_tokens": len(ids) - first,
            }
        )
    return samples


@torch.no_grad()
def generate_answers(
    model: Any, samples: list[dict[str, Any]], tokenizer: Any, *, device: torch.device, zero3: bool
) -> list[str]:
    """Greedy answers for `samples`, split over the ranks and gathered on all of them."""
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = samples[rank::world]
    rounds = -(-len(samples) // world)
    was_training = model.training
    model.eval()
    answers: list[tuple[int, str]] = []
    for i in range(rounds):
        # Under ZeRO-3 every rank must run as many generate() calls as the others.
        sample = mine[i] if i < len(mine) else samples[0]
        prompt = torch.tensor([sample["prompt_ids"]], device=device)
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            # Twice the reference's length is enough to be right; longer is wrong anyway.
            max_new_tokens=min(MAX_NEW_TOKENS, 2 * sample["reference_tokens"] + 8),
            do_sample=False,
            use_cache=True,
            synced_gpus=zero3,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        if i < len(mine):
            text = tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)
            answers.append((rank + i * world, text.strip()))
    model.train(was_training)
    gathered: list[list[tuple[int, str]]] = [[] for _ in range(world)]
    dist.all_gather_object(gathered, answers)
    return [text for _, text in sorted(pair for part in gathered for pair in part)]


def generation_metrics(answers: list[str], references: list[str]) -> dict[str, float | str]:
    """Exact match and ROUGE-L F1 (rouge-score) in [0, 1], corpus BLEU (sacrebleu) in [0, 100],
    F1 in [0, 1] (f1.py: token overlap, or macro-F1 over labels) with `f1_kind`."""
    import sacrebleu
    from rouge_score import rouge_scorer

    from finetune_trainer.f1 import f1_scores

    if not references:
        return {}
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [
        scorer.score(ref, ans)["rougeL"].fmeasure
        for ans, ref in zip(answers, references, strict=True)
    ]
    return {
        "exact_match": sum(a == r for a, r in zip(answers, references, strict=True))
        / len(references),
        "bleu": sacrebleu.corpus_bleu(answers, [references]).score,
        "rouge": sum(rouge) / len(rouge),
        "generation_samples": float(len(references)),
    } | f1_scores(answers, references)
