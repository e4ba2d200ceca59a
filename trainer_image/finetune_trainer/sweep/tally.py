"""Counting a sweep's trials: pure `tally` over trial records, and the Tune callback and
scheduler that feed it.

A trial that ASHA stopped and one that trained to the end both end TERMINATED in Tune,
so each leaves its own mark in its folder: the scheduler writes `stopped_early`, the trial
writes `metrics.json`. The marks live in the output, so a resumed sweep counts the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_operator import api
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler

from finetune_trainer.sweep.trial import STOPPED_MARK, TRIAL_METRICS, TRIALS_DIR, tracker_name


@dataclass(frozen=True)
class TrialRecord:
    """One trial as sweep.json and status show it."""

    id: str
    state: str  # done | running | stopped | failed | pending
    hyperparameters: dict[str, Any]
    metric: float | None  # final when done, else the latest evaluation
    step: int | None  # the latest step Tune heard of
    final_metrics: dict[str, Any] = field(default_factory=dict)


def tally(records: list[TrialRecord], sweep: api.SweepSpec) -> api.SweepProgress:
    """The counts and the best finished trial (by sweep.metric and mode)."""
    count = {
        state: sum(r.state == state for r in records)
        for state in ("done", "running", "stopped", "failed")
    }
    best = best_trial(records, sweep)
    display = f"{count['done'] + count['stopped']}/{sweep.trials}" + (
        f" ({count['stopped']} stopped)" if count["stopped"] else ""
    )
    return api.SweepProgress(
        trials=sweep.trials,
        **count,
        display=display,
        best=None
        if best is None
        else api.BestTrial(id=best.id, metric=best.metric, hyperparameters=best.hyperparameters),
    )


def best_trial(records: list[TrialRecord], sweep: api.SweepSpec) -> TrialRecord | None:
    """Only trials that trained to the end have weights to publish."""
    done = [r for r in records if r.state == "done" and r.metric is not None]
    if not done:
        return None
    pick = min if sweep.mode == "min" else max
    return pick(done, key=lambda r: float(r.metric or 0.0))


def state_of(trial_dir: Path, tune_status: str) -> str:
    """Our state of a trial from its folder's marks and Tune's status."""
    if (trial_dir / TRIAL_METRICS).exists():
        return "done"
    if (trial_dir / STOPPED_MARK).exists():
        return "stopped"
    return {"RUNNING": "running", "ERROR": "failed"}.get(tune_status, "pending")


class StoppingRecorder(ASHAScheduler):
    """ASHA that marks each trial it stops, in the trial's folder, and stops it through
    its tracker (the trial's workers leave after their step; see trial.py)."""

    def __init__(self, output_dir: Path, run_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.trials_dir, self.run_name = output_dir / TRIALS_DIR, run_name

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        decision: str = super().on_trial_result(tune_controller, trial, result)
        if decision != self.STOP or result.get("finished"):
            return decision
        folder = self.trials_dir / trial.trial_id
        folder.mkdir(parents=True, exist_ok=True)
        mark = folder / STOPPED_MARK
        if mark.exists():  # a resumed sweep's stopped trial, reporting where it stopped
            return decision
        mark.write_text(f"stopped at step {result.get('step')}\n")
        import ray

        try:
            progress = ray.get_actor(tracker_name(self.run_name, trial.trial_id))
            # Waited for: the trial's rank 0 reads it before the answer that lets it go on.
            ray.get(progress.request_stop.remote())
        except (ValueError, ray.exceptions.RayActorError):  # the trial has ended meanwhile
            return decision
        return self.CONTINUE  # the trial returns by itself once its workers have left


# Tune pickles its callbacks with the experiment (and restores them on resume), so the
# callback holds no live objects: it tells whoever listens in this process.
_listeners: list[Callable[[list[TrialRecord]], None]] = []


def listen(listener: Callable[[list[TrialRecord]], None]) -> Callable[[], None]:
    """Call `listener` with every trial's record after each step of Tune's loop; returns
    the function that stops it."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


class TallyCallback(Callback):
    """Reads Tune's trials after each step of its loop and tells the listeners."""

    def __init__(self, output_dir: Path, metric: str) -> None:
        self.trials_dir, self.metric = output_dir / TRIALS_DIR, metric

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        records = [self.record(trial) for trial in trials]
        for listener in list(_listeners):
            listener(records)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.on_step_end(-1, trials)

    def record(self, trial: Any) -> TrialRecord:
        last = trial.last_result or {}
        return TrialRecord(
            id=trial.trial_id,
            state=state_of(self.trials_dir / trial.trial_id, trial.status),
            hyperparameters=dict(trial.config),
            metric=last.get(self.metric),
            step=last.get("step"),
        )
