"""The Ray actor between rank 0 and the driver: step rows go in, stop requests come out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

ANSWER_POLL_SECONDS = 0.02


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
        self.answered_step = 0  # a sweep's trial: the latest step its scheduler answered

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

    def answered(self, step: int) -> None:
        """A sweep's trial: the scheduler has answered the evaluation at `step` (a stop
        it asked for came before this, through request_stop)."""
        self.answered_step = max(self.answered_step, step)

    def answer_for(self, step: int) -> bool | None:
        """True: stop; False: go on past `step`; None: the scheduler has not answered yet."""
        if self.stop:
            return True
        return False if self.answered_step >= step else None

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


def is_ranked_evaluation(step: int, keys: Any, metric: str | None, total_steps: int) -> bool:
    """Whether a trial's row at `step` goes to its scheduler, which may stop the trial there:
    an evaluation carrying the sweep's metric, between the shared base model (step 0) and
    the last step (reported once the weights are saved). `metric` None: no scheduler."""
    return metric is not None and metric in keys and 0 < step < total_steps


def wait_for_answer(progress: Any, step: int) -> bool:
    """Wait until the scheduler has answered the evaluation at `step`; True: stop there."""
    import ray

    while (answer := ray.get(progress.answer_for.remote(step))) is None:
        time.sleep(ANSWER_POLL_SECONDS)
    return bool(answer)
