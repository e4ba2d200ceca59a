"""The training loop every Ray Train worker runs: setup → baseline → steps → evaluate → save.

`train_worker` is the table of contents. `Worker` holds one rank's state (engine, model,
tokenizer, data, checkpointed state), built by `Worker.setup`; each method does one step.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from finetune_operator import api

from finetune_trainer import artifacts, checkpoints, evaluate
from finetune_trainer.batches import collate, forward_sums, micro_batches_for_step, to_device
from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.deepspeed_config import (
    BatchPlan,
    build_deepspeed_config,
    plan_batch,
    resolve_precision,
)
from finetune_trainer.model import (
    apply_method,
    count_parameters,
    load_base_model,
    load_tokenizer,
    resolve_model_dir,
    use_fast_kernels,
    use_loss_head,
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
# Rows of the data the driver puts in Ray's object store: train, validation, test, generation.
Rows = dict[str, list[Any]]


@dataclass(frozen=True)
class WorkerSetup:
    """What the driver hands every worker: built on the driver, so a wrong field fails there."""

    spec: api.FineTuneJobSpec
    base_dir: Path  # the job file's folder: relative sources resolve against it
    total_steps: int
    steps_per_epoch: int
    data: Any  # ray ObjectRef of Rows
    tracker: Any  # ProgressTracker actor handle
    output_dir: Path  # where rank 0 writes adapter/ and model/ (local, or staging for s3)


def train_worker(config: dict[str, WorkerSetup]) -> None:
    """Entry point of each Ray Train worker (Ray Train's train_loop_config is `config`)."""
    worker = Worker.setup(config["setup"])
    stop = worker.evaluate_baseline()
    while worker.steps_left() and not stop:
        row = worker.train_step()
        row |= worker.evaluate_if_due()
        stop = worker.report(row)
        if worker.checkpoint_due(stop):
            worker.save_checkpoint(loss=row["loss"])
    if stop:
        return  # interrupted: the checkpoint just saved is where the next run resumes
    worker.save_final_checkpoint()
    metrics = worker.final_metrics()
    worker.save_model()
    worker.finished(metrics)


@dataclass
class Worker:
    """One rank's training state; `setup` builds it inside Ray Train, `build` without Ray."""

    config: WorkerSetup
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    data: Rows
    model_dir: Path
    tokenizer: Any
    engine: Any  # the DeepSpeed engine around `model`
    model: Any  # the (peft-wrapped) transformers model
    batch: BatchPlan
    trainable_params: int
    total_params: int
    state: checkpoints.TrainerState = field(default_factory=checkpoints.TrainerState)
    early: EarlyStopping | None = None
    saved_step: int = 0  # the step of the newest checkpoint
    attempt: checkpoints.Attempt | None = None  # set inside Ray Train, where ranks save
    # A checkpoint resumed from before Ray Train recorded it: Ray never deletes it, so it
    # goes once `keep` newer checkpoints are saved, as Ray's own would.
    adopted_step: int | None = None
    saves: int = 0  # checkpoints saved by this attempt
    last_train_losses: list[float] = field(default_factory=list)

    @classmethod
    def setup(cls, config: WorkerSetup) -> Worker:
        """Ray Train's context, the data, the engine, and the newest checkpoint's state."""
        import ray
        import ray.train

        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is first imported
        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        device = _device()
        torch.manual_seed(config.spec.hyperparameters.seed)
        worker = cls.build(config, ray.get(config.data), rank=rank, world=world, device=device)
        worker.attempt = checkpoints.this_attempt(rank, world)
        restored, unrecorded = checkpoints.restore_latest(worker.engine, rank=rank)
        worker.resume(restored)
        if unrecorded and restored is not None:
            worker.adopted_step = restored.step
        if rank == 0:
            ray.get(config.tracker.started.remote(worker.state.step))
        return worker

    @classmethod
    def build(
        cls, config: WorkerSetup, data: Rows, *, rank: int, world: int, device: torch.device
    ) -> Worker:
        """Tokenizer, model and DeepSpeed engine for this rank, starting at step 0."""
        spec = config.spec
        # Resolved again here: in a cluster this worker may sit on another node than the driver.
        model_dir = resolve_model_dir(spec.model, base_dir=config.base_dir)
        tokenizer = load_tokenizer(model_dir, spec.model, spec.dataset.chat_template)
        precision, note = resolve_precision(
            spec.hyperparameters.precision,
            cuda=torch.cuda.is_available(),
            bf16_supported=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        )
        if note and rank == 0:
            print(f"note: {note}")
        ds_config = build_deepspeed_config(spec, world_size=world, precision=precision)
        engine, model = _build_engine(spec, config.total_steps, model_dir, ds_config, precision)
        hp = spec.hyperparameters
        trainable, total = count_parameters(model)
        worker = cls(
            config=config, rank=rank, world=world, device=device, dtype=DTYPES[precision],
            data=data, model_dir=model_dir, tokenizer=tokenizer, engine=engine, model=model,
            batch=plan_batch(hp.batch_size, world, hp.micro_batch_size),
            trainable_params=trainable, total_params=total,
        )  # fmt: skip
        worker.early = _early_stopping(spec, worker.state)
        return worker

    @property
    def spec(self) -> api.FineTuneJobSpec:
        return self.config.spec

    def resume(self, restored: checkpoints.TrainerState | None) -> None:
        """Continue from a checkpoint's trainer state (the engine has loaded its own)."""
        if restored is not None:
            self.state, self.saved_step = restored, restored.step
            self.early = _early_stopping(self.spec, restored)

    def evaluate(self, split: str = "validation") -> dict[str, float]:
        """Loss, perplexity and accuracy on one split, over all ranks; {} when it is empty."""
        return evaluate.evaluate_loss(
            self.engine,
            self.data[split],
            micro=max(1, self.batch.micro_batch_size),
            pad_token_id=self.tokenizer.pad_token_id,
            device=self.device,
            dtype=self.dtype,
        )

    def evaluate_baseline(self) -> bool:
        """At step 0, report the base model's validation loss; True when asked to stop."""
        if self.state.step != 0 or not self.data["validation"]:
            return False
        # The yardstick every later evaluation is read against.
        baseline = self.evaluate()
        row = {"step": 0, "epoch": 0.0, "eval_loss": baseline["loss"],
               "eval_perplexity": baseline["perplexity"]}  # fmt: skip
        if self.early is not None:
            self.early.update(baseline["loss"])
            self.state.early_stopping = self.early.state_dict()
        return self.report(row)

    def steps_left(self) -> bool:
        return self.state.step < self.config.total_steps and not self.state.stopped_early

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over this rank's share of the global batch; its history row."""
        started = time.perf_counter()
        hp = self.spec.hyperparameters
        micro_batches = micro_batches_for_step(
            self.data["train"],
            self.state.step,
            seed=hp.seed,
            steps_per_epoch=self.config.steps_per_epoch,
            global_batch=hp.batch_size,
            micro=self.batch.micro_batch_size,
            rank=self.rank,
            world_size=self.world,
        )
        learning_rate = self.engine.get_lr()[0]  # the rate this step uses (read before it moves)
        loss, tokens, loss_tokens = _optimizer_step(
            self.engine, micro_batches, self.tokenizer.pad_token_id, self.device, self.dtype
        )
        elapsed = time.perf_counter() - started
        self.state.step += 1
        self.last_train_losses = [*self.last_train_losses, loss][-10:]
        row = {
            "step": self.state.step,
            "epoch": round(self.state.step / self.config.steps_per_epoch, 4),
            "loss": loss,
            "learning_rate": learning_rate,
            "tokens_per_second": tokens / elapsed,
            "loss_tokens_per_second": loss_tokens / elapsed,
        }
        return row | _gpu_row(tokens / elapsed, self.total_params, self.world)

    def evaluate_if_due(self) -> dict[str, Any]:
        """Validation loss every evaluation.everySteps (else once an epoch) and at the end."""
        step = self.state.step
        every = self.spec.evaluation.every_steps or self.config.steps_per_epoch
        if step % every != 0 and step != self.config.total_steps:
            return {}
        result = self.evaluate()
        if not result:
            return {}
        if self.early is not None:
            self.state.stopped_early = self.early.update(result["loss"])
            self.state.early_stopping = self.early.state_dict()
        row = {"eval_loss": result["loss"], "eval_perplexity": result["perplexity"]}
        # The driver tells the operator, which posts an EarlyStopped Event.
        return row | ({"stopped_early": True} if self.state.stopped_early else {})

    def report(self, row: dict[str, Any]) -> bool:
        """Hand the row to the driver; True (on every rank) when the driver asked to stop."""
        return _stop_requested(self.rank, self.config.tracker, row, self.device)

    def checkpoint_due(self, stop: bool) -> bool:
        every = self.spec.checkpointing.every_steps
        return self.state.step % every == 0 or stop or self.state.stopped_early

    def save_checkpoint(self, loss: float | None = None) -> None:
        """Collective: every rank saves its shards into this step's checkpoint."""
        assert self.attempt is not None, "checkpoints are saved inside Ray Train only"
        metrics = {"step": self.state.step} | ({"loss": loss} if loss is not None else {})
        checkpoints.save_and_report(self.engine, self.state, metrics, attempt=self.attempt)
        self.saved_step, self.saves = self.state.step, self.saves + 1
        if self.rank == 0:
            self.config.tracker.checkpointed.remote(self.state.step)
            if self.adopted_step is not None and self.saves >= self.spec.checkpointing.keep:
                checkpoints.run_storage().remove(self.adopted_step)
                self.adopted_step = None

    def save_final_checkpoint(self) -> None:
        """The last step's checkpoint, unless the cadence already saved it."""
        if self.saved_step != self.state.step:
            self.save_checkpoint()

    def final_metrics(self) -> dict[str, Any]:
        """Training loss (mean of the last 10 steps), counts, and the final evaluation."""
        losses = self.last_train_losses
        metrics: dict[str, Any] = {"train_loss": sum(losses) / len(losses)} if losses else {}
        metrics |= {
            "steps": self.state.step,
            "stopped_early": self.state.stopped_early,
            "trainable_parameters": self.trainable_params,
            "total_parameters": self.total_params,
        }
        return metrics | self.final_evaluation()

    def final_evaluation(self) -> dict[str, float]:
        """Validation loss/perplexity, then test loss, perplexity, accuracy and generation."""
        metrics: dict[str, float] = {}
        validation = self.evaluate()
        if validation:
            metrics |= {
                "eval_loss": validation["loss"],
                "eval_perplexity": validation["perplexity"],
            }
        wanted = set(self.spec.evaluation.metrics)
        if self.data["test"]:
            test = self.evaluate("test")
            metrics |= (
                {"test_loss": test["loss"], "test_perplexity": test["perplexity"]} if test else {}
            )
            if test and "accuracy" in wanted:
                metrics["test_accuracy"] = test["accuracy"]
        samples = self.data["generation"]
        if samples and wanted & set(evaluate.GENERATION_METRICS):
            answers = evaluate.generate_answers(
                self.engine.module, samples, self.tokenizer, device=self.device,
                zero3=self.spec.deepspeed.zero_stage == 3,
            )  # fmt: skip
            scores = evaluate.generation_metrics(answers, [s["reference"] for s in samples])
            metrics |= {
                f"test_{k}": v
                for k, v in scores.items()
                if k in wanted or k == "generation_samples"
            }
        return {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}

    def save_model(self) -> None:
        """adapter/ and/or model/ in the output folder (collective under ZeRO-3)."""
        artifacts.save_model_artifacts(
            self.engine, self.model, self.spec, self.tokenizer, self.model_dir,
            self.config.output_dir, rank=self.rank,
        )  # fmt: skip

    def finished(self, metrics: dict[str, Any]) -> None:
        if self.rank == 0:
            import ray

            ray.get(self.config.tracker.finished.remote(metrics))


def _device() -> torch.device:
    if torch.cuda.is_available():
        import ray.train.torch

        device: torch.device = ray.train.torch.get_device()
        torch.cuda.set_device(device)  # DeepSpeed and bitsandbytes use the current device
        return device
    return torch.device("cpu")


def _build_engine(
    spec: api.FineTuneJobSpec,
    total_steps: int,
    model_dir: Path,
    ds_config: dict[str, Any],
    precision: str,
) -> tuple[Any, Any]:
    """DeepSpeed engine around the (peft-wrapped) model, our AdamW and LR schedule."""
    import deepspeed

    hp = spec.hyperparameters
    # Ray Train already made the process group; DeepSpeed adopts it (its config reads the
    # world size from it, and ZeRO-3's HfDeepSpeedConfig parses the config right below).
    deepspeed.init_distributed(dist_backend=dist.get_backend())
    dschf = None
    if spec.deepspeed.zero_stage == 3:
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        # Must exist before from_pretrained so weights load straight into ZeRO-3 partitions.
        dschf = HfDeepSpeedConfig(ds_config)  # type: ignore[no-untyped-call]
    base = load_base_model(
        model_dir,
        spec.model,
        dtype=DTYPES[precision],
        quantize_4bit=spec.method.type == "qlora",
    )
    cuda = torch.cuda.is_available()
    kernels = use_fast_kernels(base, cuda=cuda, liger=hp.liger_kernels)
    model = apply_method(base, spec.method, gradient_checkpointing=hp.gradient_checkpointing)
    loss = use_loss_head(model, cuda=cuda, liger=hp.liger_kernels)
    if dist.get_rank() == 0:
        print(f"note: {kernels}; {loss}")
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = None
    if "optimizer" not in ds_config:
        optimizer = torch.optim.AdamW(parameters, lr=hp.learning_rate, weight_decay=hp.weight_decay)
    warmup = warmup_steps(total_steps, hp.warmup_ratio)

    def schedule(step: int) -> float:
        return lr_multiplier(step, total=total_steps, warmup=warmup, kind=hp.lr_scheduler)

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
    engine: Any,
    micro_batches: list[list[dict[str, Any]]],
    pad_token_id: int,
    device: torch.device,
    dtype: torch.dtype,
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
            sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches),
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


def _stop_requested(rank: int, tracker: Any, row: dict[str, Any], device: torch.device) -> bool:
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


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
