"""Step rows to the driver from a background thread, off the training step's path.

A step's loss lives on the device until someone reads it, and reading it waits for the
device to finish the step; handing the row to the tracker actor waits for a Ray round
trip. The training thread does neither: it queues the row with its tensors still on the
device and starts the next step, while this thread reads the numbers, finishes the row
(tokens/s from when the step's results were ready) and sends it. Rows keep their order.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# What a training step's row gains once its tokens/s are known (MFU, memory).
Finisher = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class PendingRow:
    """A history row whose tensors may still be computing on the device."""

    values: dict[str, Any]  # plain numbers and 0-d tensors
    started: float  # perf_counter when the step began
    # A training step's counts (tokens, loss_tokens): the row gets `<name>_per_second`.
    counts: dict[str, Any] = field(default_factory=dict)
    ready_at: float | None = None  # when its results were known; None: when first read

    def read(self) -> dict[str, Any]:
        """The row as plain numbers (waits for the device to produce them)."""
        return read_values(self.values)

    def rates(self, elapsed: float) -> dict[str, float]:
        """The counts per second over `elapsed` seconds."""
        return {f"{k}_per_second": n / elapsed for k, n in read_values(self.counts).items()}


def read_values(values: dict[str, Any]) -> dict[str, Any]:
    """Tensors as Python numbers (this waits for the device to produce them)."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in values.items()}


class BackgroundReporter:
    """Finishes and sends rows on one thread; `stop_requested` is set once the driver asked
    the run to stop (it answers each row)."""

    def __init__(self, send: Callable[[dict[str, Any]], bool], finish: Finisher) -> None:
        self.send, self.finish = send, finish
        self.rows: queue.Queue[PendingRow | None] = queue.Queue()
        self.stop_requested = threading.Event()
        self.error: BaseException | None = None
        self.previous_ready = 0.0
        self.sent: list[dict[str, Any]] = []  # rows sent since take_sent() last ran
        self.thread = threading.Thread(target=self._run, name="finetune-reporter", daemon=True)
        self.thread.start()

    def submit(self, row: PendingRow) -> None:
        self._reraise()
        self.rows.put(row)

    def flush(self) -> None:
        """Wait until every submitted row has been sent (before checkpoints and the end)."""
        self.rows.join()
        self._reraise()

    def take_sent(self) -> list[dict[str, Any]]:
        """Every row sent since the last call (after waiting for the submitted ones)."""
        self.flush()
        sent, self.sent = self.sent, []
        return sent

    def close(self) -> None:
        self.rows.put(None)
        self.thread.join()
        self._reraise()

    def _run(self) -> None:
        while (row := self.rows.get()) is not None:
            try:
                if self.error is None:
                    self._send(row)
            except BaseException as error:  # handed to the training thread by _reraise()
                self.error = error
            finally:
                self.rows.task_done()
        self.rows.task_done()

    def _send(self, row: PendingRow) -> None:
        values = row.read()
        if row.counts:  # a training step, not the baseline's evaluation row
            ready = row.ready_at if row.ready_at is not None else time.perf_counter()
            # From the later of the step's start and the previous step's end: a queue of
            # asynchronous steps is timed by when their results come out.
            elapsed = max(ready - max(row.started, self.previous_ready), 1e-9)
            self.previous_ready = ready
            values = self.finish(values | row.rates(elapsed))
        stop = self.send(values)
        self.sent.append(values)
        if stop:
            self.stop_requested.set()

    def _reraise(self) -> None:
        if self.error is not None:
            raise RuntimeError("reporting a step to the driver failed") from self.error
