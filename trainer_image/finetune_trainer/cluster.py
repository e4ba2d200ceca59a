"""Which Ray this run uses: the RayJob's cluster (RAY_ADDRESS set) or a small local one.

A local instance takes seconds to start, most of them spent waiting for its processes, so
`finetune run` starts it in the background (`start_local`) while the driver prepares the
data, and joins it (`connect`) when training needs it. Until then Ray's log lines are held
back: a run the data stage refuses prints its one-line error and nothing of Ray's
(`stop_local` drops them and ends the instance).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType

from finetune_trainer import reaper

RAY_ADDRESS_ENV = "RAY_ADDRESS"
VERBOSE_ENV = "FINETUNE_VERBOSE"
# A small object store: the prepared rows are the biggest objects we put in it.
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
# Ray settings for a single machine, each set only where the user has not set it:
# - no Ray Train watcher of node preemption (spot nodes of a cluster) and no metrics for a
#   dashboard that a local instance does not run: each a process or work at start-up;
# - Ray Train's controller polls its workers every 0.25 s instead of every 2 s: it notices
#   the end of training (and takes each checkpoint's report, on which the next report
#   waits) that much sooner; a poll is one small actor call.
# (Not `RAY_prestart_worker_first_driver=0`, though Ray Train's actors cannot use the idle
# workers Ray starts ahead: with it, the raylet's agents sometimes outlived a killed driver.)
LOCAL_RAY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
}
# What ray.init says when called off the main thread; start_local sets that handler itself.
_OFF_MAIN_THREAD_WARNING = "SIGTERM handler is not set"


def in_cluster() -> bool:
    """Inside a RayJob the submitter sets RAY_ADDRESS; locally it is unset."""
    return bool(os.environ.get(RAY_ADDRESS_ENV))


def connect() -> None:
    """Join the cluster in RAY_ADDRESS (inside a RayJob) or start a small local instance
    (or wait for the one start_local began, and let its held log lines out).

    Locally, worker logs stay in Ray's session folder unless FINETUNE_VERBOSE=1: the
    terminal shows the progress bar, and a failure's traceback still comes back through
    fit(). In a cluster they go to the driver's log, which is what `kubectl logs` shows.
    A local instance dies with this process, even when it is killed (see reaper)."""
    global _started_here
    import ray

    if _local is not None:
        _local.wait_started(release=True)
        return
    if ray.is_initialized():
        return
    if in_cluster():
        ray.init(log_to_driver=True)
        return
    _prepare_local()
    _init_local()
    _started_here = True


def start_local() -> None:
    """Start the local instance on a background thread, its log lines held until connect().

    Nothing happens when Ray is already up (a test's instance) or inside a RayJob."""
    global _local
    import ray

    if _local is not None or ray.is_initialized() or in_cluster():
        return
    _prepare_local()
    # ray.init sets this handler only from the main thread: SIGTERM ends the run through
    # the exit handlers (Ray's shutdown), as it would had Ray started here.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    _local = _LocalStart()
    _local.start()


def stop_local(*, wait: bool = True) -> None:
    """End the instance this process started, its held lines unseen: for a run refused
    before training, and once training is over (the outputs need no Ray), so that without
    `wait` its processes stop while the driver writes the outputs instead of at exit (where
    Ray's own handler waits for this shutdown). A test's own instance is left alone."""
    global _local, _started_here
    import ray

    local, _local = _local, None
    if local is not None:
        local.wait_started(release=False)
        local.stop(wait=wait)
    elif _started_here and ray.is_initialized():
        ray.shutdown()
    _started_here = False


def available_resources() -> tuple[float, float]:
    """(GPUs, CPUs) training can use: the cluster's once connected, else this machine's.

    Locally this needs no Ray, so bad input is refused before Ray starts."""
    import ray

    if ray.is_initialized():
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        return resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    import torch

    return float(torch.cuda.device_count()), float(os.cpu_count() or 1)


def _prepare_local() -> None:
    reaper.start()  # before Ray starts, so that everything it starts carries the mark
    for name, value in LOCAL_RAY_ENV.items():  # inherited by every Ray process
        os.environ.setdefault(name, value)


def _init_local() -> None:
    import ray

    ray.init(
        num_cpus=os.cpu_count() or 1,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        include_dashboard=False,
        log_to_driver=os.environ.get(VERBOSE_ENV) == "1",
    )


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.exit(signum)


class _HeldRecords(logging.Filter):
    """On one of Ray's log handlers: keeps the records back instead of letting them out."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


class _LocalStart(threading.Thread):
    """ray.init for a local instance on a daemon thread, with Ray's log lines held back, and
    later ray.shutdown on the same thread.

    The thread lives until the instance ends: Ray starts its processes with a parent death
    signal, which Linux sends when the parent *thread* ends, not the process."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="finetune-local-ray")
        # Ray configures its "ray" logger's handlers when imported: hold them from now on.
        self.held = [_HeldRecords(h) for h in logging.getLogger("ray").handlers]
        for hold in self.held:
            hold.handler.addFilter(hold)
        self.started, self.stopping = threading.Event(), threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        import ray

        try:
            _init_local()
        except BaseException as error:  # handed to the main thread by wait_started()
            self.error = error
        finally:
            self.started.set()
        self.stopping.wait()
        if self.error is None:
            ray.shutdown()

    def wait_started(self, *, release: bool) -> None:
        """Wait for the start; with `release`, let the held lines out (else drop them) and
        raise what the start raised."""
        self.started.wait()
        for hold in self.held:
            hold.handler.removeFilter(hold)
            for record in hold.records if release else []:
                if not record.getMessage().startswith(_OFF_MAIN_THREAD_WARNING):
                    hold.handler.handle(record)
        self.held = []
        if release and self.error is not None:
            raise self.error

    def stop(self, *, wait: bool) -> None:
        self.stopping.set()
        if wait:
            self.join()


_local: _LocalStart | None = None  # the local instance start_local began, until it ends
_started_here = False  # whether connect() itself started the local instance
