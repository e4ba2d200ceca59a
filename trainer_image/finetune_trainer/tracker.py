"""The Ray actor between rank 0 and the driver: step rows go in, stop requests come out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrackerState:
    """What the driver learns at each poll: rows not yet handed out, and the run's state."""

    rows: list[dict[str, Any]]
    start_step: int | None  # where this `finetune run` began
    resumed_at: int | None  # where the latest attempt began
    attempts: int  # (re)starts of the worker group so far
    last_checkpoint: int | None  # step of the newest checkpoint
    final_metrics: dict[str, Any] | None  # set once training and evaluation are done
    stopping: bool


class ProgressTracker:
    """Runs as a Ray actor (start_tracker); rank 0 calls started/record/checkpointed/finished."""

    def __init__(self, stop_at_step: int | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.sent = 0
        self.stop = False
        self.stop_at_step = stop_at_step  # test hook: behave as if Ctrl-C came at this step
        self.start_step: int | None = None
        self.resumed_at: int | None = None
        self.attempts = 0
        self.last_checkpoint: int | None = None
        self.final_metrics: dict[str, Any] | None = None

    def started(self, step: int) -> None:
        """Called by rank 0 at every (re)start; after a worker failure Ray Train restarts the
        group from the last checkpoint, so rows past it are stale."""
        self.attempts += 1
        if self.start_step is None:
            self.start_step = step
        self.resumed_at = step
        # Rows already handed out are cut from history.jsonl by the driver (it sees
        # `attempts` change); rows not yet handed out are dropped here.
        self.rows = self.rows[: self.sent] + [
            r for r in self.rows[self.sent :] if r["step"] <= step
        ]

    def record(self, row: dict[str, Any]) -> bool:
        """Keep a step's row; True when the driver asked the run to stop."""
        self.rows.append(row)
        if self.stop_at_step is not None and row["step"] >= self.stop_at_step:
            self.stop = True
        return self.stop

    def recovered(self, rows: list[dict[str, Any]]) -> None:
        """Rows a resumed attempt sends again from its checkpoint (the driver keeps those
        its history.jsonl lacks)."""
        self.rows.extend(rows)

    def checkpointed(self, step: int) -> None:
        self.last_checkpoint = step

    def finished(self, metrics: dict[str, Any]) -> None:
        self.final_metrics = metrics

    def request_stop(self) -> None:
        self.stop = True

    def poll(self) -> TrackerState:
        """Rows not yet handed out, and the run's state."""
        new, self.sent = self.rows[self.sent :], len(self.rows)
        return TrackerState(
            rows=new,
            start_step=self.start_step,
            resumed_at=self.resumed_at,
            attempts=self.attempts,
            last_checkpoint=self.last_checkpoint,
            final_metrics=self.final_metrics,
            stopping=self.stop,
        )


def start_tracker(stop_at_step: int | None) -> Any:
    """The tracker as a Ray actor; its handle goes to rank 0 through the worker's setup."""
    import ray

    return ray.remote(num_cpus=0)(ProgressTracker).remote(stop_at_step)
