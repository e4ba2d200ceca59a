"""The training loop every Ray Train worker runs: engine → resume → steps → evaluate → save.

Read `train_worker` top to bottom; each helper below it does one thing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from finetune_operator import api

from finetune_trainer import artifacts, checkpoints, evaluate
from finetune_trainer.batches import collate, forward_sums, micro_batches_for_step, to_device
from finetune_trainer.deepspeed_config import build_deepspeed_config, plan_batch, resolve_precision
from finetune_trainer.model import (
    apply_method,
    count_parameters,
    load_base_model,
    load_tokenizer,
    resolve_model_dir,
)
from finetune_trainer.schedule import EarlyStopping, lr_multiplier, warmup_steps

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Peak dense bf16 tensor FLOP/s per device, for the MFU estimate (unknown devices get none).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


@dataclass
class WorkerSetup:
    """What the driver hands every worker (through train_loop_config)."""

    spec: dict[str, Any]  # FineTuneJobSpec on the wire
    base_dir: str  # the job file's folder: relative sources resolve against it
    total_steps: int
    steps_per_epoch: int
    data: Any  # ray ObjectRef of {"train", "validation", "test", "generation"} rows
    tracker: Any  # ProgressTracker actor handle
    output_dir: str  # where rank 0 writes adapter/ and model/ (local, or staging for s3)


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker."""
    import ray
    import ray.train

    setup = WorkerSetup(**config)
    spec = api.FineTuneJobSpec.model_validate(setup.spec)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = _device()
    torch.manual_seed(spec.hyperparameters.seed)

    data = ray.get(setup.data)
    # Resolved again here: in a cluster this worker may sit on another node than the driver.
    model_dir = resolve_model_dir(spec.model, base_dir=Path(setup.base_dir))
    tokenizer = load_tokenizer(model_dir, spec.model, spec.dataset.chat_template)
    precision, note = resolve_precision(
        spec.hyperparameters.precision,
        cuda=torch.cuda.is_available(),
        bf16_supported=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    )
    if note and rank == 0:
        print(f"note: {note}")
    ds_config = build_deepspeed_config(spec, world_size=world, precision=precision)
    engine, model = _build_engine(spec, setup, model_dir, ds_config, precision)
    batch = plan_batch(
        spec.hyperparameters.batch_size, world, spec.hyperparameters.micro_batch_size
    )
    dtype = DTYPES[precision]

    state = checkpoints.restore_latest(engine) or checkpoints.TrainerState()
    early = _early_stopping(spec, state)
    tracker = setup.tracker
    if rank == 0:
        ray.get(tracker.started.remote(state.step))
    trainable, total_params = count_parameters(model)
    every_eval = spec.evaluation.every_steps or setup.steps_per_epoch
    eval_micro = max(1, batch.micro_batch_size)
    last_train_losses: list[float] = []

    def run_eval(split: str = "validation") -> dict[str, float]:
        return evaluate.evaluate_loss(
            engine,
            data[split],
            micro=eval_micro,
            pad_token_id=tokenizer.pad_token_id,
            device=device,
            dtype=dtype,
        )

    stop_requested = False
    if state.step == 0 and data["validation"]:
        # The base model's validation loss: the yardstick every later evaluation is read against.
        baseline = run_eval()
        row = {"step": 0, "epoch": 0.0, "eval_loss": baseline["loss"],
               "eval_perplexity": baseline["perplexity"]}  # fmt: skip
        if early is not None:
            early.update(baseline["loss"])
            state.early_stopping = early.state_dict()
        stop_requested = _stop_requested(rank, tracker, row, device)
    saved_step = state.step
    while state.step < setup.total_steps and not state.stopped_early and not stop_requested:
        started = time.perf_counter()
        micro_batches = micro_batches_for_step(
            data["train"],
            state.step,
            seed=spec.hyperparameters.seed,
            steps_per_epoch=setup.steps_per_epoch,
            global_batch=spec.hyperparameters.batch_size,
            micro=batch.micro_batch_size,
            rank=rank,
            world_size=world,
        )
        learning_rate = engine.get_lr()[0]  # the rate this step uses (read before it moves)
        loss, tokens, loss_tokens = _optimizer_step(
            engine, micro_batches, tokenizer.pad_token_id, device, dtype
        )
        elapsed = time.perf_counter() - started
        state.step += 1
        row = {
            "step": state.step,
            "epoch": round(state.step / setup.steps_per_epoch, 4),
            "loss": loss,
            "learning_rate": learning_rate,
            "tokens_per_second": tokens / elapsed,
            "loss_tokens_per_second": loss_tokens / elapsed,
        }
        row |= _gpu_row(tokens / elapsed, total_params, world)
        last_train_losses = [*last_train_losses, loss][-10:]
        if state.step % every_eval == 0 or state.step == setup.total_steps:
            result = run_eval()
            if result:
                row |= {"eval_loss": result["loss"], "eval_perplexity": result["perplexity"]}
                if early is not None:
                    state.stopped_early = early.update(result["loss"])
                    state.early_stopping = early.state_dict()
        stop_requested = _stop_requested(rank, tracker, row, device)
        if (
            state.step % spec.checkpointing.every_steps == 0
            or stop_requested
            or state.stopped_early
        ):
            checkpoints.save_and_report(
                engine, state, {"step": state.step, "loss": loss}, rank=rank
            )
            saved_step = state.step
            if rank == 0:
                tracker.checkpointed.remote(state.step)

    if stop_requested:
        return  # interrupted: the checkpoint just saved is where the next run resumes
    if saved_step != state.step:
        checkpoints.save_and_report(engine, state, {"step": state.step}, rank=rank)
    metrics = (
        {"train_loss": sum(last_train_losses) / len(last_train_losses)} if last_train_losses else {}
    )
    metrics |= {
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "trainable_parameters": trainable,
        "total_parameters": total_params,
    }
    metrics |= _final_evaluation(spec, engine, data, tokenizer, device, run_eval)
    artifacts.save_model_artifacts(
        engine, model, spec, tokenizer, model_dir, Path(setup.output_dir), rank=rank
    )
    if rank == 0:
        ray.get(tracker.finished.remote(metrics))


def _device() -> torch.device:
    if torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)  # DeepSpeed and bitsandbytes use the current device
        return device
    return torch.device("cpu")


def _build_engine(
    spec: api.FineTuneJobSpec,
    setup: WorkerSetup,
    model_dir: Path,
    ds_config: dict[str, Any],
    precision: str,
):
    """DeepSpeed engine around the (peft-wrapped) model, our AdamW and LR schedule."""
    import deepspeed

    hp = spec.hyperparameters
    # Ray Train already made the process group; DeepSpeed adopts it (its config reads the
    # world size from it, and ZeRO-3's HfDeepSpeedConfig parses the config right below).
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    dschf = None
    if spec.deepspeed.zero_stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        # Must exist before from_pretrained so weights load straight into ZeRO-3 partitions.
        dschf = HfDeepSpeedConfig(ds_config)
    base = load_base_model(
        model_dir,
        spec.model,
        dtype=DTYPES[precision],
        quantize_4bit=spec.method.type == "qlora",
    )
    model = apply_method(base, spec.method, gradient_checkpointing=hp.gradient_checkpointing)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    warmup = warmup_steps(setup.total_steps, hp.warmup_ratio)

    def schedule(step: int) -> float:
        return lr_multiplier(step, total=setup.total_steps, warmup=warmup, kind=hp.lr_scheduler)

    engine, optimizer, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=parameters,
        optimizer=optimizer,
        config=ds_config,
        lr_scheduler=(lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule)),
    )
    engine._finetune_hf_ds_config = dschf
    return engine, model


def _optimizer_step(
    engine, micro_batches: list[list[dict]], pad_token_id: int, device, dtype
) -> tuple[float, int, int]:
    """One optimizer step over this rank's micro batches; returns the global mean token
    loss and the global non-padding and loss token counts.

    Each micro batch's summed loss is divided by the loss tokens of the whole global batch
    (all micro batches, all ranks), so the step's gradient is that of the true mean token
    loss however unevenly the loss tokens fall. DeepSpeed divides by accumulation steps and
    averages over ranks, which the factor `scale` undoes.
    """
    batches = [to_device(collate(rows, pad_token_id, dtype), device) for rows in micro_batches]
    counts = torch.tensor(
        [
            sum(int((b["labels"] != -100).sum()) for b in batches),
            sum(int(b["num_tokens"]) for b in batches),
        ],
        dtype=torch.float64,
        device=device,
    )
    dist.all_reduce(counts)
    global_loss_tokens, global_tokens = counts.tolist()
    scale = len(batches) * dist.get_world_size() / max(1.0, global_loss_tokens)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        summed, _, _, _ = forward_sums(engine, batch)
        engine.backward(summed * scale)
        engine.step()
        loss_sum += summed.detach().double()
    dist.all_reduce(loss_sum)
    counted = float(loss_sum) / max(1.0, global_loss_tokens)
    return counted, int(global_tokens), int(global_loss_tokens)


def _stop_requested(rank: int, tracker, row: dict[str, Any], device) -> bool:
    """Rank 0 reports the step and learns whether the driver asked to stop (Ctrl-C); the
    answer is broadcast so that every rank saves the same checkpoint and leaves together."""
    import ray

    flag = torch.zeros(1, device=device)
    if rank == 0:
        flag[0] = float(ray.get(tracker.record.remote(row)))
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def _early_stopping(
    spec: api.FineTuneJobSpec, state: checkpoints.TrainerState
) -> EarlyStopping | None:
    policy = spec.evaluation.early_stopping
    if policy is None:
        return None
    if state.early_stopping:
        return EarlyStopping.from_state(state.early_stopping)
    return EarlyStopping(patience=policy.patience, min_delta=policy.min_delta)


def _gpu_row(tokens_per_second: float, total_params: int, world: int) -> dict[str, float]:
    """Peak memory and MFU on GPU. MFU uses model FLOPs = 6 · N · tokens (N = all
    parameters, trainable and frozen; forward 2N + backward 4N per token), over the
    peak dense bf16 FLOP/s of every device in the run."""
    if not torch.cuda.is_available():
        return {}
    row = {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    name = torch.cuda.get_device_name()
    peak = next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
    if peak:
        row["mfu"] = 6 * total_params * tokens_per_second / (peak * world)
    return row


def _final_evaluation(spec, engine, data, tokenizer, device, run_eval) -> dict[str, float]:
    """Validation loss/perplexity, then test loss, perplexity, accuracy and generation metrics."""
    metrics: dict[str, float] = {}
    validation = run_eval()
    if validation:
        metrics |= {"eval_loss": validation["loss"], "eval_perplexity": validation["perplexity"]}
    wanted = set(spec.evaluation.metrics)
    if data["test"]:
        test = run_eval("test")
        metrics |= (
            {"test_loss": test["loss"], "test_perplexity": test["perplexity"]} if test else {}
        )
        if test and "accuracy" in wanted:
            metrics["test_accuracy"] = test["accuracy"]
    samples = data["generation"]
    if samples and wanted & set(evaluate.GENERATION_METRICS):
        zero3 = spec.deepspeed.zero_stage == 3
        answers = evaluate.generate_answers(
            engine.module, samples, tokenizer, device=device, zero3=zero3
        )
        scores = evaluate.generation_metrics(answers, [s["reference"] for s in samples])
        metrics |= {
            f"test_{k}": v for k, v in scores.items() if k in wanted or k == "generation_samples"
        }
    return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
