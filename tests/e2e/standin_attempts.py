"""One attempt of a RayJob: its entrypoint on this machine, as Ray's job supervisor runs it.

Ray starts the entrypoint with a shell in a new session and, when it exits non-zero, sets
the job's message to the last lines of its log (ray/dashboard/modules/job/job_supervisor.py
and job_log_storage_client.py: 10 lines, at most 20,000 characters). Stopping an attempt
stands for deleting its RayCluster: every process it started is gone afterwards, found by
an environment mark that Ray's own processes inherit, not only by process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.rayjob_states import RAY_MESSAGES, RayJobInfo
from tests.e2e.standin_pods import HeadPod

MARK_ENV = "KUBERAY_STANDIN_ATTEMPT"
LOG_LINES_ON_ERROR, MAX_LOG_CHARS = 10, 20_000
ATTEMPT_FILE = "attempt.json"  # the running attempt's number, driver pid and mark (for tests)


def now_ms() -> int:
    return int(time.time() * 1000)


def log_tail(path: Path) -> str:
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    return "".join(lines[-LOG_LINES_ON_ERROR:])[-MAX_LOG_CHARS:]


def failure_message(return_code: int, log: Path) -> str:
    """The message Ray's job supervisor gives a failed entrypoint."""
    tail = log_tail(log)
    if tail:
        return (
            f"Job entrypoint command failed with exit code {return_code}, "
            f"last available logs (truncated to 20,000 chars):\n{tail}"
        )
    return f"Job entrypoint command failed with exit code {return_code}. No logs available."


def marked_processes(mark: str) -> list[int]:
    """Every process of this user whose environment carries the attempt's mark."""
    needle = f"{MARK_ENV}={mark}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


class Attempt:
    """The entrypoint's process for one attempt, its log, and its job info."""

    def __init__(self, pod: HeadPod, number: int, mark: str) -> None:
        self.pod, self.number, self.mark = pod, number, mark
        self.log = pod.folder / f"attempt-{number}.log"
        self.started_ms = now_ms()
        self.ended_ms = 0
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                pod.command,
                shell=True,
                cwd=pod.folder,
                env={**pod.env, MARK_ENV: mark},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        record = {"attempt": number, "pid": self.process.pid, "mark": mark, "log": str(self.log)}
        (pod.folder / ATTEMPT_FILE).write_text(json.dumps(record))

    def info(self) -> RayJobInfo:
        code = self.process.poll()
        if code is None:
            return RayJobInfo("RUNNING", RAY_MESSAGES["RUNNING"], self.started_ms)
        self.ended_ms = self.ended_ms or now_ms()
        if code == 0:
            return RayJobInfo(
                "SUCCEEDED", RAY_MESSAGES["SUCCEEDED"], self.started_ms, self.ended_ms
            )
        message = failure_message(code, self.log)
        return RayJobInfo("FAILED", message, self.started_ms, self.ended_ms)

    def stop(self, timeout: float = 30.0) -> None:
        """Delete the "cluster": SIGKILL the session, then anything else that carries the mark."""
        deadline = time.monotonic() + timeout
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        while True:
            self.process.poll()
            left = marked_processes(self.mark)
            if not left:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"attempt {self.number}: processes {left} survived SIGKILL")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)
        self.process.wait()
        (self.pod.folder / ATTEMPT_FILE).unlink(missing_ok=True)
