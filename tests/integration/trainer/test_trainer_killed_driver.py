"""A `finetune run` whose driver is SIGKILLed leaves no Ray process training or checkpointing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.factories import MakeJob, write_job
from tests.marked_processes import MARK_ENV, marked_commands

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def processes_marked(mark: str) -> list[int]:
    """PIDs of the live processes the run with `mark` started."""
    return list(marked_commands(mark))


def describe(pids: list[int]) -> list[str]:
    """What each process is, for the failure message."""
    lines = []
    for pid in pids:
        try:
            command = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        lines.append(f"{pid}: {command.decode(errors='replace')[:200]}")
    return lines


def snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in folder.rglob("*") if p.exists()}


def wait_for(condition, timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def test_a_killed_driver_leaves_no_worker_behind(job_dir):
    manifest = (
        MakeJob.trainer()
        .spec(hyperparameters={"maxSteps": 400}, checkpointing={"everySteps": 1, "keep": 2})
        .obj()
    )
    job = write_job(job_dir, manifest)
    mark = uuid.uuid4().hex
    # No RAY_ADDRESS: the driver starts a local Ray of its own, as `finetune run` does.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {MARK_ENV: mark}
    driver = subprocess.Popen(
        [sys.executable, "-m", "finetune_operator.cli", "run", str(job)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # nothing here may kill its process group for it
    )
    checkpoints = job_dir / "out" / "checkpoints"
    try:
        assert wait_for(lambda: any(checkpoints.glob("*/checkpoint_step_*")), timeout=400), (
            "no checkpoint was written"
        )
        assert processes_marked(mark), "the test cannot see the run's processes"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        left = wait_for(lambda: not processes_marked(mark), timeout=30)
        assert left, (
            f"still running 30 s after the driver was killed: {describe(processes_marked(mark))}"
        )
        before = snapshot(checkpoints)
        time.sleep(5)
        assert snapshot(checkpoints) == before
    finally:
        for pid in processes_marked(mark):  # only what this test started
            os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
