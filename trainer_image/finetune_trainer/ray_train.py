"""Ray Train wiring: connect to Ray, lay out the workers, and run the TorchTrainer.

The run's name comes from the job's name and UID, and its storage is the output's
checkpoints/ folder, so a retry (or `finetune run` again) finds its own checkpoints
through `ray.train.get_checkpoint()`, while a re-created job (new UID) starts fresh.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

from finetune_operator import api

RAY_ADDRESS_ENV = "RAY_ADDRESS"
VERBOSE_ENV = "FINETUNE_VERBOSE"
# A small object store: the prepared rows are the biggest objects we put in it.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20


def training_failures() -> tuple[type[BaseException], ...]:
    """What fit() raises when the run itself failed (after FailureConfig's retries)."""
    from ray.train import TrainingFailedError

    return (TrainingFailedError,)


class MethodUnavailable(ValueError):
    """The method needs hardware this run does not have; raised before any work starts."""


@dataclass(frozen=True)
class WorkerLayout:
    """How many Ray Train workers (one per training rank) and what each one reserves."""

    num_workers: int
    use_gpu: bool
    cpus_per_worker: int
    notes: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return self.num_workers


def plan_workers(
    resources: api.ResourcesSpec,
    *,
    workers_override: int | None,
    cluster_gpus: float,
    cluster_cpus: float,
    local: bool,
) -> WorkerLayout:
    """Ranks = workers x gpusPerWorker (workers on CPU); CPUs split over a pod's ranks."""
    notes = []
    workers = workers_override or resources.workers
    gpus = resources.gpus_per_worker
    if gpus and cluster_gpus < 1:
        notes.append(
            f"no GPU here: resources.gpusPerWorker {gpus} is treated as 0 and training runs on CPU"
        )
        gpus = 0
    ranks = workers * gpus if gpus else workers
    cpus = max(1, resources.cpus_per_worker // gpus) if gpus else resources.cpus_per_worker
    if local and cpus * ranks > cluster_cpus:
        fitted = max(1, int(cluster_cpus // ranks))
        notes.append(
            f"resources.cpusPerWorker {resources.cpus_per_worker} does not fit this machine's "
            f"{int(cluster_cpus)} CPUs for {ranks} workers; using {fitted} CPU per worker"
        )
        cpus = fitted
    return WorkerLayout(num_workers=ranks, use_gpu=gpus > 0, cpus_per_worker=cpus, notes=notes)


def check_method_supported(method: api.MethodSpec, layout: WorkerLayout) -> None:
    """qlora needs CUDA (bitsandbytes NF4); fail before data preparation or model loading."""
    if method.type == "qlora" and not layout.use_gpu:
        raise MethodUnavailable(
            "spec.method.type: qlora quantises the base model to 4-bit NF4 with bitsandbytes, "
            "which needs a CUDA GPU, and this run has none; use method.type lora or full"
        )
    if method.type == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        raise MethodUnavailable(
            "spec.method.type: qlora needs bitsandbytes, which is not installed: "
            "pip install 'finetune-operator[gpu]' (the trainer image has it)"
        )


def run_name(metadata: api.ObjectMeta) -> str:
    """The job's name plus the first 8 characters of its UID when it has one."""
    uid = (metadata.uid or "").replace("-", "")[:8]
    return f"{metadata.name}-{uid}" if uid else metadata.name


def in_cluster() -> bool:
    """Inside a RayJob the submitter sets RAY_ADDRESS; locally it is unset."""
    return bool(os.environ.get(RAY_ADDRESS_ENV))


def connect() -> None:
    """Join the cluster in RAY_ADDRESS (inside a RayJob) or start a small local instance.

    Locally, worker logs stay in Ray's session folder unless FINETUNE_VERBOSE=1: the
    terminal shows the progress bar, and a failure's traceback still comes back through
    fit(). In a cluster they go to the driver's log, which is what `kubectl logs` shows."""
    import ray

    if ray.is_initialized():
        return
    if in_cluster():
        ray.init(log_to_driver=True)
        return
    ray.init(
        num_cpus=os.cpu_count() or 1,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=os.environ.get(VERBOSE_ENV) == "1",
    )


def available_resources() -> tuple[float, float]:
    """(GPUs, CPUs) training can use: the cluster's once connected, else this machine's.

    Locally this needs no Ray, so bad input is refused before Ray starts."""
    import ray

    if ray.is_initialized():
        resources = ray.cluster_resources()
        return resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    import torch

    return float(torch.cuda.device_count()), float(os.cpu_count() or 1)


class ProgressTracker:
    """A Ray actor between rank 0 and the driver: rows go in, stop requests come out."""

    def __init__(self, stop_at_step: int | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.sent = 0
        self.stop = False
        self.stop_at_step = stop_at_step  # test hook: behave as if Ctrl-C came at this step
        self.start_step: int | None = None  # where this `finetune run` began
        self.resumed_at: int | None = None  # where the latest attempt began
        self.attempts = 0
        self.total_steps: int | None = None
        self.last_checkpoint: int | None = None
        self.final_metrics: dict[str, Any] | None = None

    def started(self, step: int, total_steps: int) -> None:
        """Called by rank 0 at every (re)start; after a worker failure Ray Train restarts the
        group from the last checkpoint, so rows past it are stale."""
        self.attempts += 1
        if self.start_step is None:
            self.start_step = step
        self.resumed_at, self.total_steps = step, total_steps
        # Rows already handed out are cut from history.jsonl by the driver (it sees
        # `attempts` change); rows not yet handed out are dropped here.
        self.rows = self.rows[: self.sent] + [
            r for r in self.rows[self.sent :] if r["step"] <= step
        ]

    def record(self, row: dict[str, Any]) -> bool:
        self.rows.append(row)
        if self.stop_at_step is not None and row["step"] >= self.stop_at_step:
            self.stop = True
        return self.stop

    def checkpointed(self, step: int) -> None:
        self.last_checkpoint = step

    def finished(self, metrics: dict[str, Any]) -> None:
        self.final_metrics = metrics

    def request_stop(self) -> None:
        self.stop = True

    def poll(self) -> dict[str, Any]:
        """Rows not yet handed out, and the run's state."""
        new, self.sent = self.rows[self.sent :], len(self.rows)
        return {
            "rows": new,
            "start_step": self.start_step,
            "resumed_at": self.resumed_at,
            "attempts": self.attempts,
            "total_steps": self.total_steps,
            "last_checkpoint": self.last_checkpoint,
            "final_metrics": self.final_metrics,
            "stopping": self.stop,
        }


def start_tracker(stop_at_step: int | None):
    import ray

    return ray.remote(num_cpus=0)(ProgressTracker).remote(stop_at_step)


def checkpoint_storage(storage: str) -> dict[str, Any]:
    """RunConfig storage arguments; an S3 endpoint (MinIO, Ceph) needs an explicit filesystem."""
    from finetune_trainer.upload import s3_endpoint

    endpoint = s3_endpoint()
    if not (storage.startswith("s3://") and endpoint):
        return {"storage_path": storage}
    import pyarrow.fs

    return {
        "storage_path": storage.removeprefix("s3://"),
        "storage_filesystem": pyarrow.fs.S3FileSystem(endpoint_override=endpoint),
    }


def fit(
    setup: dict[str, Any],
    *,
    layout: WorkerLayout,
    name: str,
    storage: str,
    spec: api.FineTuneJobSpec,
):
    """Run train_worker on every rank; returns Ray's Result (raises on a failed run)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from finetune_trainer.loop import train_worker

    trainer = TorchTrainer(
        train_worker,
        train_loop_config=setup,
        scaling_config=ScalingConfig(
            num_workers=layout.num_workers,
            use_gpu=layout.use_gpu,
            resources_per_worker={"CPU": layout.cpus_per_worker}
            | ({"GPU": 1} if layout.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=name,
            **checkpoint_storage(storage),
            failure_config=FailureConfig(max_failures=spec.run_policy.backoff_limit),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpointing.keep),
        ),
        # gloo on CPU: NCCL needs GPUs.
        torch_config=TorchConfig(backend="nccl" if layout.use_gpu else "gloo"),
    )
    return trainer.fit()
