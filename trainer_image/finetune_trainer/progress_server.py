"""GET /progress on the driver: the run's progress as JSON, for the operator to poll.

Trainer pods have no Kubernetes write access, so the operator reads this endpoint on the
Ray head and writes status itself. The body is the design's progress contract:
{"progress": {...}, "lastCheckpoint": {"step", "uri"} | null, "result": {...} | null},
each part the wire form of the API model status uses (api.Progress, api.CheckpointRef,
api.Result). Started only when FINETUNE_PROGRESS_PORT is set.

The hand-over of the result: KubeRay tears the cluster down as soon as the driver exits
(shutdownAfterJobFinishes), so once the result is published the driver keeps serving until
the result has been read at least once, or FINETUNE_PROGRESS_LINGER_SECONDS pass. The RayJob
stays Running meanwhile, and the operator writes the result before it sees the job end.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict

from finetune_operator import api

PORT_ENV = "FINETUNE_PROGRESS_PORT"
LINGER_ENV = "FINETUNE_PROGRESS_LINGER_SECONDS"
DEFAULT_LINGER_SECONDS = 120.0  # above the operator's longest backoff between reads (60 s)


class ProgressBody(TypedDict):
    """The JSON body of GET /progress; keys as in FineTuneJob.status."""

    progress: dict[str, Any]
    lastCheckpoint: dict[str, Any] | None
    result: dict[str, Any] | None


class ProgressBoard:
    """The latest progress, checkpoint and result; thread-safe snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress = api.Progress()
        self._checkpoint: api.CheckpointRef | None = None
        self._result: api.Result | None = None
        self._clock: tuple[float, int] | None = None  # (time, step) when this attempt began
        self.result_served = threading.Event()  # a GET /progress carried the result

    def update(self, row: dict[str, Any], total_steps: int) -> None:
        """Fold one history row in; loss fields keep their last value until a row has them."""
        with self._lock:
            step = row["step"]
            if self._clock is None or step <= self._clock[1]:
                self._clock = (time.monotonic(), step)
            started, first = self._clock
            rate = (step - first) / max(1e-9, time.monotonic() - started)  # steps per second
            progress = self._progress
            progress.step, progress.total_steps = step, total_steps
            progress.epoch = row.get("epoch")
            progress.percent = round(100.0 * step / total_steps, 2) if total_steps else None
            progress.eta_seconds = round((total_steps - step) / rate, 1) if rate > 0 else None
            if "loss" in row:
                progress.train_loss = row["loss"]
                progress.tokens_per_second = row["tokens_per_second"]
            if "eval_loss" in row:
                progress.eval_loss = row["eval_loss"]
                best = progress.best_eval_loss
                progress.best_eval_loss = (
                    row["eval_loss"] if best is None else min(best, row["eval_loss"])
                )
            if "reward_accuracy" in row:  # dpo
                progress.reward_accuracy = row["reward_accuracy"]
                progress.reward_margin = row["reward_margin"]
            if "eval_reward_accuracy" in row:
                progress.eval_reward_accuracy = row["eval_reward_accuracy"]
            if row.get("stopped_early"):
                progress.early_stopped = True

    def swept(self, sweep: api.SweepProgress) -> None:
        """A sweep's trial counts and best trial so far."""
        with self._lock:
            self._progress.sweep = sweep

    def checkpointed(self, checkpoint: api.CheckpointRef) -> None:
        with self._lock:
            self._checkpoint = checkpoint

    def finished(self, result: api.Result) -> None:
        with self._lock:
            self._result = result

    @property
    def has_result(self) -> bool:
        with self._lock:
            return self._result is not None

    def snapshot(self) -> ProgressBody:
        with self._lock:
            return {
                "progress": self._progress.to_wire(),
                "lastCheckpoint": self._checkpoint.to_wire() if self._checkpoint else None,
                "result": self._result.to_wire() if self._result else None,
            }


def final_result(
    output_uri: str, metrics: dict[str, Any], serving_uri: str | None = None
) -> api.Result:
    """status.result: the output's URI, the finite numeric metrics as floats, and where the
    serving manifests are."""
    numbers = {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
    return api.Result(outputUri=output_uri, metrics=numbers, servingUri=serving_uri)


def serve(board: ProgressBoard, port: int) -> ThreadingHTTPServer:
    """Serve `board` on 0.0.0.0:port from a daemon thread; call .shutdown() to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/progress":
                self.send_error(404, "only /progress is served here")
                return
            snapshot = board.snapshot()
            body = json.dumps(snapshot).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
            if snapshot["result"] is not None:
                board.result_served.set()

        def log_message(self, *_: Any) -> None:  # polled every few seconds: no access log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="finetune-progress").start()
    return server


def serve_from_env(board: ProgressBoard) -> ThreadingHTTPServer | None:
    port = os.environ.get(PORT_ENV)
    return serve(board, int(port)) if port else None


def linger_seconds() -> float:
    value = os.environ.get(LINGER_ENV)
    return float(value) if value else DEFAULT_LINGER_SECONDS


def hand_over_result(board: ProgressBoard, linger: float) -> bool:
    """Wait until the result has been read, at most `linger` seconds; True when it was."""
    if not board.has_result or board.result_served.is_set():
        return board.result_served.is_set()
    print(f"waiting up to {linger:.0f}s for the operator to read the result from /progress")
    return board.result_served.wait(linger)


@contextmanager
def serving(board: ProgressBoard) -> Iterator[None]:
    """Serve `board` while the block runs, when FINETUNE_PROGRESS_PORT asks for it; after a
    successful run, until the result has been read (see the module's docstring)."""
    server = serve_from_env(board)
    try:
        yield
        if server is not None:
            hand_over_result(board, linger_seconds())
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()  # frees the port for the next run in this process
