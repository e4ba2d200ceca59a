"""One trial: a Tune function trainable that builds and fits one Ray Train run.

This is Ray 2.60's shape for Train V2 inside Tune: the trial function is the Train run's
driver. The trial follows its run's ProgressTracker (as `finetune run` does) and hands Tune
each validation result; the workers report to Ray Train only at checkpoints, and an extra
collective report per evaluation would buy nothing the tracker does not already carry.

Under a scheduler, the trial's rank 0 waits at each evaluation until the scheduler has
answered it (tune.report returns only then). A stop reaches the workers through the
tracker, so they leave at the rung that stopped them, and this function returns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer import layout, ray_train, tracker
from finetune_trainer.history import HISTORY, HistoryLog, read_history
from finetune_trainer.sweep.space import apply_trial

TRIALS_DIR = "trials"  # the output's folder of per-trial outputs (history, adapter)
FINISHED = "finished"  # in a trial's last Tune result: it trained to the end
TRIAL_METRICS = "metrics.json"  # written by a trial that trained to the end
STOPPED_MARK = "stopped_early"  # written by the scheduler into a trial it stopped
POLL_SECONDS = 0.1  # a trial's rank 0 waits on this poll at each evaluation (see below)


@dataclass(frozen=True)
class TrialShared:
    """What every trial shares: the job, the prepared data (in the object store) and where
    things go. Built once on the driver; the data stage never runs again for a trial."""

    spec: api.FineTuneJobSpec
    base_dir: Path
    total_steps: int
    steps_per_epoch: int
    data: list[Any]  # per rank, an ObjectRef of its rows (shards.split_for_ranks)
    workers: layout.WorkerLayout
    run_name: str  # the job's run name; a trial's Train run is "<run_name>-<trial id>"
    output_dir: Path
    checkpoint_storage: str

    def trial_dir(self, trial_id: str) -> Path:
        return self.output_dir / TRIALS_DIR / trial_id


def run_trial(config: dict[str, Any], shared: TrialShared) -> None:
    """Tune's trainable: fit the job with this trial's values, reporting each evaluation."""
    import ray.tune

    from finetune_trainer.loop import WorkerSetup
    from finetune_trainer.run import _Background

    trial_id = ray.tune.get_context().get_trial_id()
    spec = apply_trial(shared.spec, config)
    out = shared.trial_dir(trial_id)
    out.mkdir(parents=True, exist_ok=True)
    # Tune saves its experiment every 10 s or so, so a driver killed outright (SIGKILL, a
    # lost pod) leaves trials that settled since then marked unfinished, and Tune starts
    # them again. Their marks say how they ended: they are not trained again.
    if (out / STOPPED_MARK).exists():
        _report_last_evaluation(out / HISTORY, spec.sweep, shared.total_steps)
        return
    if (out / TRIAL_METRICS).exists():
        finished = json.loads((out / TRIAL_METRICS).read_text())
        _report_finished(finished, spec.sweep, shared.total_steps, last_metric=None)
        return
    # Named, so that the scheduler can ask this trial's workers to stop (see tally).
    progress = (
        ray.remote(num_cpus=0)(tracker.ProgressTracker)
        .options(name=tracker_name(shared.run_name, trial_id))
        .remote(None)
    )
    setup = WorkerSetup(
        spec=spec,
        base_dir=shared.base_dir,
        total_steps=shared.total_steps,
        steps_per_epoch=shared.steps_per_epoch,
        data=shared.data,
        tracker=progress,
        output_dir=out,
        scheduler_metric=_metric_name(spec.sweep) if _scheduled(spec.sweep) else None,
    )
    name = f"{shared.run_name}-{trial_id}"
    fitting = _Background(
        lambda: ray_train.fit(
            setup, layout=shared.workers, name=name, storage=shared.checkpoint_storage
        )
    )
    follower = _TrialFollower(progress, out / HISTORY, spec.sweep, shared.total_steps)
    fitting.start()
    while fitting.is_alive():
        fitting.join(timeout=POLL_SECONDS)
        follower.poll()
    fitting.reraise()  # a failed run is a failed trial (Tune records its error)
    state = follower.poll()
    if state.final_metrics is None:
        return  # stopped by the scheduler, whose mark is in the trial's folder already
    final = state.final_metrics
    # The trial's own record that it finished: a resumed sweep and sweep.json read it.
    (out / TRIAL_METRICS).write_text(json.dumps(final, indent=2) + "\n")
    _report_finished(final, spec.sweep, shared.total_steps, follower.last_metric)


def _report_last_evaluation(history: Path, sweep: api.SweepSpec | None, total_steps: int) -> None:
    """A stopped trial's last ranked evaluation once more: Tune wants the metric in every
    trial's results, this run's included."""
    import ray.tune

    metric = _metric_name(sweep)
    ranked = [row for row in read_history(history)
              if tracker.is_ranked_evaluation(row["step"], row, metric, total_steps)]  # fmt: skip
    if ranked:
        ray.tune.report({"step": ranked[-1]["step"], metric: ranked[-1][metric]})


def _report_finished(
    final: dict[str, Any], sweep: api.SweepSpec | None, total_steps: int,
    last_metric: float | None,
) -> None:  # fmt: skip
    """Tune's last result of a trial that trained to the end (a scheduler leaves it be)."""
    import ray.tune

    metric = _metric_name(sweep)
    numbers = {k: v for k, v in final.items() if isinstance(v, (int, float))}
    ray.tune.report(
        numbers | {"step": total_steps, FINISHED: True, metric: final.get(metric, last_metric)}
    )


class _TrialFollower:
    """Appends the trial's rows to its history.jsonl and reports evaluations to Tune."""

    def __init__(
        self, progress: Any, history: Path, sweep: api.SweepSpec | None, total_steps: int
    ) -> None:
        self.tracker, self.log, self.metric = progress, HistoryLog(history), _metric_name(sweep)
        self.total_steps = total_steps
        self.last_metric: float | None = None

    def poll(self) -> tracker.TrackerState:
        import ray
        import ray.tune

        state: tracker.TrackerState = ray.get(self.tracker.poll.remote())
        for row in self.log.take(state):
            # Step 0 is the base model every trial shares; the last step's result goes in
            # the final report, once the weights are saved (a scheduler may stop a trial
            # at any report, and a finished trial must not be taken for a stopped one).
            if tracker.is_ranked_evaluation(row["step"], row, self.metric, self.total_steps):
                self.last_metric = row[self.metric]
                # Returns once the scheduler has answered (Tune's function API reports
                # synchronously); a stop it asked for is in the tracker before this.
                ray.tune.report({"step": row["step"], self.metric: row[self.metric]})
        if state.rows:
            # Rank 0 waits at each evaluation until this: after the answers to the rows
            # reported above, and at once for rows history already held (a resumed attempt
            # sends its checkpoint's again), so that no row leaves it waiting for good.
            ray.get(self.tracker.answered.remote(max(row["step"] for row in state.rows)))
        return state


def tracker_name(run_name: str, trial_id: str) -> str:
    """The Ray actor name of a trial's ProgressTracker."""
    return f"finetune-tracker-{run_name}-{trial_id}"


def _scheduled(sweep: api.SweepSpec | None) -> bool:
    """Whether a scheduler may stop trials at their evaluations."""
    return sweep is not None and sweep.scheduler.type != "none"


def _metric_name(sweep: api.SweepSpec | None) -> str:
    return sweep.metric if sweep is not None else "eval_loss"
