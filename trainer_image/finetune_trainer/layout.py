"""How a run's ranks map onto Ray Train workers, and what the method needs of them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from finetune_operator import api

from finetune_trainer.errors import MethodUnavailable


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
