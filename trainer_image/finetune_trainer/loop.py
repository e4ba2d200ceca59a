"""The training loop every Ray Train worker runs: setup → baseline → steps → evaluate → save.

`train_worker` is the table of contents. `Worker` holds one rank's state (engine, model,
tokenizer, data, checkpointed state), built by `Worker.setup`; each method does one step.

The device is kept fed: the next step's batches are collated on a background thread
(prefetch.py), a step's loss and token counts stay on the device as tensors, and rank 0's
reporter thread reads them and hands the row to the driver (reporter.py). The training
thread waits for the device only where a number decides something: evaluations (early
stopping) and checkpoints.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from finetune_operator import api

from finetune_trainer import artifacts, checkpoints, dpo, evaluate, retention, stopping
from finetune_trainer.batches import micro_batches_for_step
from finetune_trainer.data.packing import Row
from finetune_trainer.deepspeed_config import (
    BatchPlan,
    build_deepspeed_config,
    plan_batch,
)
from finetune_trainer.engine import DTYPES, build_engine
from finetune_trainer.model import count_parameters, load_tokenizer, resolve_model_dir
from finetune_trainer.precision import bf16_native, resolve_precision
from finetune_trainer.prefetch import HostBatches, ahead, collate_step
from finetune_trainer.reporter import BackgroundReporter, PendingRow
from finetune_trainer.reports import device_row
from finetune_trainer.schedule import EarlyStopping, early_stopping_for
from finetune_trainer.train_step import optimizer_step

PRECISION_OF = {dtype: name for name, dtype in DTYPES.items()}
# A rank's data from the driver: its training rows (shards.RankRows), and the validation
# and test rows and generation samples whole.
Rows = dict[str, Any]


@dataclass(frozen=True)
class WorkerSetup:
    """What the driver hands every worker: built on the driver, so a wrong field fails there."""

    spec: api.FineTuneJobSpec
    base_dir: Path  # the job file's folder: relative sources resolve against it
    total_steps: int
    steps_per_epoch: int
    data: list[Any]  # per rank, a ray ObjectRef of its Rows (shards.split_for_ranks)
    tracker: Any  # ProgressTracker actor handle
    output_dir: Path  # where rank 0 writes adapter/ and model/ (local, or staging for s3)
    stop_at_step: int | None = None  # test hook: stop as if Ctrl-C came during this step
    # A sweep's trial under a scheduler: the metric it ranks by. Rank 0 then waits at each
    # evaluation for the scheduler's answer, so a trial stopped at a rung never trains past
    # it (an answer that arrived a few steps late let a quick trial run to the end).
    scheduler_metric: str | None = None


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of each Ray Train worker (Ray Train's train_loop_config is `config`; its
    "setup" is an object reference to the WorkerSetup, see ray_train.fit)."""
    import ray

    worker = Worker.setup(ray.get(config["setup"]))
    try:
        worker.measure_retention_before()
        stop = worker.evaluate_baseline()
        while worker.steps_left() and not stop:
            row = worker.train_step()
            row.values |= worker.evaluate_if_due()
            stop = worker.report(row)
            if worker.checkpoint_due(stop):
                worker.save_checkpoint(loss=float(row.values["loss"]))
        if stop:
            return  # interrupted: the checkpoint just saved is where the next run resumes
        worker.save_final_checkpoint()
        worker.restore_best()
        metrics = worker.final_metrics()
        worker.save_model()
        worker.finished(metrics)
    finally:
        worker.close()


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
    last_train_losses: list[torch.Tensor] = field(default_factory=list)  # on the device
    feed: Iterator[tuple[int, HostBatches]] | None = None  # started at the first step
    reporter: BackgroundReporter | None = None  # rank 0 inside Ray Train
    control_group: Any = None  # a gloo group for the stop flag when the default is NCCL
    # Evaluation results of the current step: the last step's validation pass serves the
    # final metrics too (same weights, same numbers), so it runs once.
    evaluations: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)
    preference: dpo.PreferenceObjective | None = None  # method.objective dpo
    last_preference_stats: list[dict[str, torch.Tensor]] = field(default_factory=list)
    outputs_step: int | None = None  # the step whose weights the outputs hold (restore_best)

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
        data = ray.get(config.data[rank])
        worker = cls.build(config, data, rank=rank, world=world, device=device)
        worker.attempt = checkpoints.this_attempt(rank, world)
        restored, unrecorded = checkpoints.restore_latest(worker.engine, rank=rank)
        worker.resume(restored)
        if unrecorded and restored is not None:
            worker.adopted_step = restored.step
        if rank == 0:
            ray.get(config.tracker.started.remote(worker.state.step))
            if worker.state.recent_rows:  # the driver may have died before writing them
                ray.get(config.tracker.recovered.remote(worker.state.recent_rows))
            worker.reporter = BackgroundReporter(
                send=lambda row: bool(ray.get(config.tracker.record.remote(row))),
                finish=worker.finish_row,
            )
        if world > 1 and dist.get_backend() != "gloo":
            # The stop flag is a host value: broadcasting it over gloo needs no device sync.
            worker.control_group = dist.new_group(backend="gloo")
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
            bf16_supported=bf16_native(cuda=torch.cuda.is_available()),
        )
        if note and rank == 0:
            print(f"note: {note}")
        ds_config = build_deepspeed_config(
            spec, world_size=world, precision=precision, cuda=torch.cuda.is_available()
        )
        notes: list[str] = []
        engine, model = build_engine(
            spec, config.total_steps, model_dir, ds_config, precision, notes=notes
        )
        for note in notes if rank == 0 else []:
            print(f"note: {note}")
        hp = spec.hyperparameters
        trainable, total = count_parameters(model)
        worker = cls(
            config=config, rank=rank, world=world, device=device, dtype=DTYPES[precision],
            data=data, model_dir=model_dir, tokenizer=tokenizer, engine=engine, model=model,
            batch=plan_batch(hp.batch_size, world, hp.micro_batch_size),
            trainable_params=trainable, total_params=total,
        )  # fmt: skip
        worker.early = early_stopping_for(
            spec.evaluation.early_stopping, worker.state.early_stopping
        )
        worker.preference = dpo.objective_for(spec, model_dir, device, DTYPES[precision])
        return worker

    @property
    def spec(self) -> api.FineTuneJobSpec:
        return self.config.spec

    def resume(self, restored: checkpoints.TrainerState | None) -> None:
        """Continue from a checkpoint's trainer state (the engine has loaded its own)."""
        if restored is not None:
            self.state, self.saved_step = restored, restored.step
            self.early = early_stopping_for(
                self.spec.evaluation.early_stopping, restored.early_stopping
            )

    def evaluate(self, split: str = "validation") -> dict[str, float]:
        """Loss, perplexity and accuracy on one split, over all ranks; {} when it is empty."""
        return self.evaluate_splits((split,))[split]

    def evaluate_splits(self, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """evaluate() for several splits in one collective pass; a split already evaluated
        at this step is not evaluated again."""
        step = self.state.step
        self.evaluations = {k: v for k, v in self.evaluations.items() if k[1] == step}
        missing = [s for s in splits if (s, step) not in self.evaluations]
        if missing:
            evaluate_splits = (
                evaluate.evaluate_losses if self.preference is None else self.preference.evaluate
            )
            results = evaluate_splits(
                self.engine,
                {split: self.data[split] for split in missing},
                micro=max(1, self.batch.micro_batch_size),
                pad_token_id=self.tokenizer.pad_token_id,
                device=self.device,
                dtype=self.dtype,
            )
            self.evaluations |= {(split, step): results[split] for split in missing}
        return {split: self.evaluations[split, step] for split in splits}

    def evaluate_baseline(self) -> bool:
        """At step 0, report the base model's validation loss; True when asked to stop."""
        if self.state.step != 0 or not self.data["validation"]:
            return False
        # The yardstick every later evaluation is read against.
        baseline = self.evaluate()
        row = {"step": 0, "epoch": 0.0} | _prefixed("eval", baseline)
        if self.early is not None:
            self.early.update(baseline["loss"])
            self.state.early_stopping = self.early.state_dict()
        return self.report(PendingRow(row, started=time.perf_counter()))

    def steps_left(self) -> bool:
        return self.state.step < self.config.total_steps and not self.state.stopped_early

    def train_step(self) -> PendingRow:
        """One optimizer step over this rank's share of the global batch; its history row,
        whose loss and token counts are still tensors on the device."""
        started = time.perf_counter()
        if self.feed is None:  # from the resumed step on, one step collated ahead
            self.feed = ahead(range(self.state.step, self.config.total_steps), self.host_batches)
        step, host = next(self.feed)
        assert step == self.state.step, f"prefetched step {step}, training step {self.state.step}"
        learning_rate = self.engine.get_lr()[0]  # the rate this step uses (read before it moves)
        extra: dict[str, torch.Tensor] = {}
        if self.preference is None:
            loss, tokens, loss_tokens = optimizer_step(self.engine, host, self.device)
        else:
            loss, extra, tokens, loss_tokens = self.preference.step(self.engine, host, self.device)
            self.last_preference_stats = [*self.last_preference_stats, extra][-10:]
        self.state.step += 1
        self.last_train_losses = [*self.last_train_losses, loss][-10:]
        values = {
            "step": self.state.step,
            "epoch": round(self.state.step / self.config.steps_per_epoch, 4),
            "loss": loss,
            "learning_rate": learning_rate,
        } | extra
        # On CPU every operation has finished when it returns: the step is over now.
        ready = None if self.device.type == "cuda" else time.perf_counter()
        counts = {"tokens": tokens, "loss_tokens": loss_tokens}
        return PendingRow(values, started=started, counts=counts, ready_at=ready)

    def host_batches(self, step: int) -> tuple[int, HostBatches]:
        """Step `step`'s micro batches of this rank, collated on the host (prefetch thread)."""
        hp = self.spec.hyperparameters
        micro_batches = micro_batches_for_step(
            # Only len() and indexing are used: a rank's RankRows serve as all rows.
            cast(list[Row], self.data["train"]),
            step,
            seed=hp.seed,
            steps_per_epoch=self.config.steps_per_epoch,
            global_batch=hp.batch_size,
            micro=self.batch.micro_batch_size,
            rank=self.rank,
            world_size=self.world,
        )
        pin = self.device.type == "cuda"
        host = collate_step(micro_batches, self.tokenizer.pad_token_id, self.dtype, pin=pin)
        return step, host if self.preference is None else self.preference.on_host(host)

    def finish_row(self, values: dict[str, Any]) -> dict[str, Any]:
        """What a step's row gains once its tokens/s are known: MFU and memory on GPUs."""
        return values | device_row(
            values["tokens_per_second"], self.trainable_params, self.total_params, self.world
        )

    def evaluate_if_due(self) -> dict[str, Any]:
        """Validation loss every evaluation.everySteps (else once an epoch) and at the end;
        at the last step the test split joins the same pass (the final metrics read both)."""
        step = self.state.step
        every = self.spec.evaluation.every_steps or self.config.steps_per_epoch
        last = step == self.config.total_steps
        if step % every != 0 and not last:
            return {}
        # With early stopping the outputs hold the best step's weights: test waits for them.
        with_test = last and self.data["test"] and self.early is None
        splits = ("validation", "test") if with_test else ("validation",)
        result = self.evaluate_splits(splits)["validation"]
        if not result:
            return {}
        if self.early is not None:
            self.state.stopped_early = self.early.update(result["loss"])
            self.state.early_stopping = self.early.state_dict()
            best = self.state.best_validation
            if best is None or result["loss"] < best["loss"]:
                self.state.best_step, self.state.best_validation = step, result
        row = _prefixed("eval", result)
        # The driver tells the operator, which posts an EarlyStopped Event.
        return row | ({"stopped_early": True} if self.state.stopped_early else {})

    def report(self, row: PendingRow) -> bool:
        """Queue the row for the driver; True (on every rank) when the run is to stop."""
        if self.reporter is not None:
            self.reporter.submit(row)
        hook = self.config.stop_at_step
        if hook is not None and self.state.step >= hook:
            return True  # every rank knows the hook: no need to agree on it
        asked = self.reporter is not None and stopping.rank0_asks_to_stop(
            self.reporter, row, step=self.state.step, metric=self.config.scheduler_metric,
            total_steps=self.config.total_steps, progress=self.config.tracker,
        )  # fmt: skip
        return stopping.agree(asked, self.world, self.control_group)

    def checkpoint_due(self, stop: bool) -> bool:
        """On the cadence, when stopping, and at each new best validation loss under early
        stopping (so that the best weights are on disk when training ends)."""
        every = self.spec.checkpointing.every_steps
        new_best = self.early is not None and self.state.best_step == self.state.step
        return self.state.step % every == 0 or stop or self.state.stopped_early or new_best

    def save_checkpoint(self, loss: float | None = None) -> None:
        """Collective: every rank saves its shards into this step's checkpoint."""
        assert self.attempt is not None, "checkpoints are saved inside Ray Train only"
        metrics = {"step": self.state.step} | ({"loss": loss} if loss is not None else {})
        if self.early is not None:  # Ray Train keeps the best `keep` by this (and the newest)
            scores = self.evaluations.get(("validation", self.state.step)) or {}
            metrics[checkpoints.SCORE] = scores.get("loss", checkpoints.UNSCORED)
        if self.reporter is not None:  # rank 0: the rows travel in the checkpoint too
            self.state.recent_rows = self.reporter.take_sent()
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

    def measure_retention_before(self) -> None:
        """Full fine-tuning changes the base itself, so its retention loss is measured before
        the first step and kept in the checkpoints; an adapter's base is measured at the end,
        with the adapter disabled (retention_metrics)."""
        kept = self.data.get("retention") or {}
        if not kept or self._adapter() or self.state.step != 0:
            return
        self.state.retention_before = self._evaluate_rows(kept)

    def restore_best(self) -> None:
        """With early stopping, load the weights of the step with the lowest validation loss
        (its checkpoint is kept): the test split and the outputs get those, not the last."""
        self.outputs_step = self.state.step
        best, validation = self.state.best_step, self.state.best_validation
        if self.early is None or best is None or best == self.state.step or validation is None:
            return
        last = self.evaluations.get(("validation", self.state.step))
        checkpoints.load_weights(self.engine, best)
        self.outputs_step = best
        # The best step's validation scores are those of the weights now loaded.
        self.evaluations = {("validation", self.state.step): validation}
        if last:
            self.evaluations["last_step_validation", self.state.step] = last

    def final_metrics(self) -> dict[str, Any]:
        """Training loss (mean of the last 10 steps), counts, which step the outputs hold, and
        the final evaluation of those weights (validation, test, retention)."""
        losses = [float(loss) for loss in self.last_train_losses]
        metrics: dict[str, Any] = {"train_loss": sum(losses) / len(losses)} if losses else {}
        metrics |= dpo.train_summary(self.last_preference_stats)
        outputs_step = self.state.step if self.outputs_step is None else self.outputs_step
        metrics |= {
            "steps": self.state.step,
            "stopped_early": self.state.stopped_early,
            "outputs_step": outputs_step,
            "outputs_chosen_by": "lowest validation loss" if self.early else "last step",
            "precision": PRECISION_OF[self.dtype],  # what ran: `auto` and fallbacks resolved
            "trainable_parameters": self.trainable_params,
            "total_parameters": self.total_params,
        }
        last = self.evaluations.get(("last_step_validation", self.state.step))
        if last:
            metrics["last_step_eval_loss"] = last["loss"]
        return metrics | self.final_evaluation() | self.retention_metrics()

    def retention_metrics(self) -> dict[str, Any]:
        """Each retention set's loss on the base model and on the weights the outputs hold."""
        kept = self.data.get("retention") or {}
        if not kept:
            return {}
        after = self._evaluate_rows(kept)
        before = self.state.retention_before
        if self._adapter():
            # The base is the same model with its adapter switched off: no second copy.
            with self.model.disable_adapter():
                before = self._evaluate_rows(kept)
        if before is None:  # a full fine-tune resumed from a checkpoint that predates it
            return {}
        common = {name: scores for name, scores in before.items() if after.get(name)}
        return retention.compare(common, after, self.spec.evaluation.max_retention_loss_increase)

    def _adapter(self) -> bool:
        from peft import PeftModel

        return isinstance(self.model, PeftModel)

    def _evaluate_rows(self, rows: dict[str, list[Row]]) -> dict[str, dict[str, float]]:
        return evaluate.evaluate_losses(
            self.engine, rows, micro=max(1, self.batch.micro_batch_size),
            pad_token_id=self.tokenizer.pad_token_id, device=self.device, dtype=self.dtype,
        )  # fmt: skip

    def final_evaluation(self) -> dict[str, Any]:
        """Validation loss/perplexity, then test loss, perplexity, accuracy and generation.

        At the end of a run both splits were evaluated by the last step's pass already."""
        metrics: dict[str, Any] = {}
        splits = ("validation", "test") if self.data["test"] else ("validation",)
        evaluated = self.evaluate_splits(splits)
        validation = evaluated["validation"]
        if validation:
            metrics |= _prefixed("eval", validation)
        wanted = set(self.spec.evaluation.metrics)
        if self.data["test"]:
            test = evaluated["test"]
            metrics |= _prefixed("test", test)
            if "accuracy" in test and "accuracy" in wanted:
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
                if k in wanted or k == "generation_samples" or (k == "f1_kind" and "f1" in wanted)
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

            if self.reporter is not None:
                self.reporter.flush()  # every row before the final metrics
            ray.get(self.config.tracker.finished.remote(metrics))

    def close(self) -> None:
        """Send the rows still queued and stop the background threads."""
        if self.feed is not None:
            self.feed.close()  # type: ignore[attr-defined]  # a generator
        if self.reporter is not None:
            self.reporter.close()


def _device() -> torch.device:
    if torch.cuda.is_available():
        import ray.train.torch

        device: torch.device = ray.train.torch.get_device()
        torch.cuda.set_device(device)  # DeepSpeed and bitsandbytes use the current device
        return device
    return torch.device("cpu")


def _prefixed(prefix: str, result: dict[str, float]) -> dict[str, float]:
    """An evaluation's numbers as history and metrics name them (eval_loss, test_perplexity,
    eval_reward_accuracy for dpo); token accuracy is reported only when asked for."""
    return {f"{prefix}_{name}": value for name, value in result.items() if name != "accuracy"}


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
