"""Start-up of a local `finetune run`: Ray starts beside the data stage, yet a refused run
shows its own error alone; a run starts no Ray Train helper it has no use for."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.factories import MakeJob, write_job
from tests.marked_processes import MARK_ENV, marked_commands

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY_LINES = ("Started a local Ray instance", "Token authentication", "SIGTERM handler")


class Watched:
    """Runs `finetune run JOB` in a fresh process and notes every process it starts."""

    def __init__(self, job: Path, **env: str) -> None:
        self.mark = uuid.uuid4().hex
        base = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray
        self.env = base | {MARK_ENV: self.mark} | env
        self.job = job
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self) -> subprocess.CompletedProcess[str]:
        watcher = threading.Thread(target=self._watch, daemon=True)
        watcher.start()
        try:
            return subprocess.run(
                [sys.executable, "-m", "finetune_operator.cli", "run", str(self.job)],
                env=self.env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
        finally:
            self.done.set()
            watcher.join()

    def left_behind(self, timeout: float = 30) -> dict[int, str]:
        deadline = time.monotonic() + timeout
        while (left := marked_commands(self.mark)) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def _watch(self) -> None:
        while not self.done.is_set():
            self.seen.update(marked_commands(self.mark).values())
            time.sleep(0.1)


def test_a_run_refused_by_the_data_stage_prints_its_one_line_and_nothing_of_ray(job_dir):
    # Too few rows for the batch is known only once the records are tokenised: by then the
    # local Ray instance is starting beside the data stage.
    job = write_job(job_dir, MakeJob.trainer().spec(hyperparameters={"batchSize": 512}).obj())
    watched = Watched(job)

    result = watched.run()

    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "batchSize: 512" in result.stderr and "rows" in result.stderr
    assert not any(line in result.stdout + result.stderr for line in RAY_LINES)
    assert any("raylet" in command for command in watched.seen), "Ray did not start beside"
    assert watched.left_behind() == {}


def test_a_local_run_starts_no_ray_train_helper_it_has_no_use_for(job_dir):
    job = write_job(job_dir, MakeJob.trainer().spec(hyperparameters={"maxSteps": 1}).obj())
    watched = Watched(job, FINETUNE_VERBOSE="1")  # every Ray process's log on the terminal

    result = watched.run()

    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert (job_dir / "out" / "adapter").is_dir() and (job_dir / "out" / "metrics.json").is_file()
    # Ray's own start lines still come, once, held back until training needed Ray.
    assert output.count("Started a local Ray instance") == 1
    assert "SIGTERM handler" not in output
    started = " ".join(watched.seen)
    assert "ray::RayTrainWorker" in started and "ray::TrainController" in started
    # A watcher freeing the workers' resources should the controller die while the cluster
    # lives on: a local instance dies with its driver. Without a dashboard it used to log
    # "Failed to query Ray Train Controller actor state" every second.
    assert "PlacementGroupCleaner" not in started
    assert "Failed to query Ray Train Controller" not in output
    assert "ray::DatasetManager" not in started  # no Ray Datasets are handed to the workers
    # Requests for an autoscaler that a local instance does not have: one more process.
    assert "AutoscalingCoordinator" not in started
    assert watched.left_behind() == {}
