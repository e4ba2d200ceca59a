"""The reaper ends every process carrying the run's mark once the driver's pipe closes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from finetune_trainer import reaper


def sleeper(token: str) -> subprocess.Popen[bytes]:
    env = os.environ | {reaper.TOKEN_ENV: token}
    return subprocess.Popen(["sleep", "300"], env=env)


def test_the_reaper_kills_marked_processes_when_the_driver_pipe_closes():
    token = "test-" + os.urandom(6).hex()
    marked, unmarked = sleeper(token), subprocess.Popen(["sleep", "300"])
    try:
        # Until the child has exec'd, /proc shows the parent's environment: wait for the mark.
        deadline = time.monotonic() + 10
        while reaper.marked(token) != [marked.pid] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert reaper.marked(token) == [marked.pid]
        watcher = subprocess.Popen(
            [sys.executable, str(Path(reaper.__file__)), token], stdin=subprocess.PIPE
        )
        time.sleep(0.5)
        assert marked.poll() is None  # nothing happens while the driver lives
        assert watcher.stdin is not None
        watcher.stdin.close()  # the driver is gone
        assert watcher.wait(timeout=30) == 0
        assert marked.wait(timeout=5) == -9
        assert unmarked.poll() is None
    finally:
        for process in (marked, unmarked):
            if process.poll() is None:
                process.kill()
                process.wait()
