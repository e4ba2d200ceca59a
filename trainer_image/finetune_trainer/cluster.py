"""Which Ray this run uses: the RayJob's cluster (RAY_ADDRESS set) or a small local one."""

from __future__ import annotations

import os

from finetune_trainer import reaper

RAY_ADDRESS_ENV = "RAY_ADDRESS"
VERBOSE_ENV = "FINETUNE_VERBOSE"
# A small object store: the prepared rows are the biggest objects we put in it.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# Ray Train extras a single machine has no use for, each a process or work at start-up: the
# watcher of node preemption (spot nodes of a cluster) and metrics for a dashboard that a
# local instance does not run. Set only where the user has not set them.
LOCAL_RAY_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def in_cluster() -> bool:
    """Inside a RayJob the submitter sets RAY_ADDRESS; locally it is unset."""
    return bool(os.environ.get(RAY_ADDRESS_ENV))


def connect() -> None:
    """Join the cluster in RAY_ADDRESS (inside a RayJob) or start a small local instance.

    Locally, worker logs stay in Ray's session folder unless FINETUNE_VERBOSE=1: the
    terminal shows the progress bar, and a failure's traceback still comes back through
    fit(). In a cluster they go to the driver's log, which is what `kubectl logs` shows.
    A local instance dies with this process, even when it is killed (see reaper)."""
    import ray

    if ray.is_initialized():
        return
    if in_cluster():
        ray.init(log_to_driver=True)
        return
    reaper.start()  # before Ray starts, so that everything it starts carries the mark
    for name, value in LOCAL_RAY_TRAIN_ENV.items():  # inherited by every Ray process
        os.environ.setdefault(name, value)
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
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        return resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    import torch

    return float(torch.cuda.device_count()), float(os.cpu_count() or 1)
