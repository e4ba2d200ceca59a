"""Ends every process of a local run once its driver is gone, however it went.

Ray ties its GCS and raylet to the driver that started them, and the workers to the
raylet, but the raylet's agents (and any worker busy in a call) notice only when they next
poll, and an agent that tries to report the death to the dead GCS can wait a minute or
more. The driver therefore marks its environment with a token, which every process Ray
starts inherits, and starts this small process with a pipe from itself: when the pipe
closes (the driver exited or was killed, even with SIGKILL), every process still carrying
the token is killed. Linux only (/proc); in a cluster KubeRay owns the processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

TOKEN_ENV = "FINETUNE_LOCAL_RUN"
_reaper: subprocess.Popen[bytes] | None = None  # kept so that its pipe stays open


def start() -> None:
    """Mark this process's future children and start the reaper that ends them with us."""
    global _reaper
    if _reaper is not None or not Path("/proc/self/environ").exists():
        return
    token = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    _reaper = subprocess.Popen(
        # Run as a script: it needs only the standard library, not this package's path.
        [sys.executable, str(Path(__file__).resolve()), token],
        stdin=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a Ctrl-C to the terminal's group must not end it first
    )
    os.environ[TOKEN_ENV] = token


def marked(token: str) -> list[int]:
    """PIDs of the live processes whose environment carries the token."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # exited meanwhile, or another user's
            continue
    return found


def reap(token: str, *, rounds: int = 10, pause: float = 0.5) -> None:
    """SIGKILL the marked processes until none is left (a dying raylet may still fork)."""
    for _ in range(rounds):
        pids = marked(token)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        time.sleep(pause)


def main(argv: list[str], stdin: IO[Any]) -> int:
    """Wait for the driver's pipe to close, then end what it started."""
    while stdin.read(4096):
        continue
    reap(argv[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], sys.stdin.buffer))
