"""GET /progress on the driver: the run's progress as JSON, for the operator to poll.

Trainer pods have no Kubernetes write access, so the operator reads this endpoint on the
Ray head and writes status itself. Field names follow FineTuneJob.status.progress (and
lastCheckpoint). Started only when FINETUNE_PROGRESS_PORT is set.
"""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT_ENV = "FINETUNE_PROGRESS_PORT"


class ProgressBoard:
    """The latest progress, updated from history rows; thread-safe snapshots."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._clock: tuple[float, int] | None = None  # (time, step) when this attempt began

    def update(self, row: dict[str, Any], total_steps: int, last_checkpoint: int | None) -> None:
        with self._lock:
            step = row["step"]
            if self._clock is None or step <= self._clock[1]:
                self._clock = (time.monotonic(), step)
            started, first = self._clock
            rate = (step - first) / max(1e-9, time.monotonic() - started)  # steps per second
            progress = self._progress | {
                "step": step,
                "totalSteps": total_steps,
                "epoch": row.get("epoch"),
                "percent": round(100.0 * step / total_steps, 2) if total_steps else None,
                "etaSeconds": round((total_steps - step) / rate, 1) if rate > 0 else None,
            }
            if "loss" in row:
                progress |= {"trainLoss": row["loss"], "tokensPerSecond": row["tokens_per_second"]}
            if "eval_loss" in row:
                progress["evalLoss"] = row["eval_loss"]
            if last_checkpoint is not None:
                progress["lastCheckpointStep"] = last_checkpoint
            self._progress = progress

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._progress)


def serve(board: ProgressBoard, port: int) -> ThreadingHTTPServer:
    """Serve `board` on 0.0.0.0:port from a daemon thread; call .shutdown() to stop."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/progress":
                self.send_error(404, "only /progress is served here")
                return
            body = json.dumps(board.snapshot()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:  # polled every few seconds: no access log
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True, name="finetune-progress").start()
    return server


def serve_from_env(board: ProgressBoard) -> ThreadingHTTPServer | None:
    port = os.environ.get(PORT_ENV)
    return serve(board, int(port)) if port else None
