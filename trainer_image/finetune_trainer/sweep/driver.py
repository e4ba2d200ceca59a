"""`finetune run` of a job with a `sweep`: the trials on Ray Tune, then the best one published.

The data stage has run once already (run.prepare_data); its rows go into the object store
once and every trial's workers read the same ones. Tune's experiment lives beside the
checkpoints, so running the same command again (or the RayJob's next attempt) restores it:
trials that finished or were stopped are not run again, a trial cut off midway resumes
from its own newest checkpoint, and Optuna continues with what it has learnt.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from finetune_operator import api

from finetune_trainer import cluster, ray_train
from finetune_trainer.sweep import outputs, tally
from finetune_trainer.sweep.space import apply_trial, tune_space
from finetune_trainer.sweep.trial import TrialShared, run_trial

if TYPE_CHECKING:
    from finetune_trainer.progress_server import ProgressBoard
    from finetune_trainer.run import RunData, RunPlan

EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
TRIAL_DRIVER_CPU = 0.01


def experiment_name(run_name: str) -> str:
    return f"{run_name}-sweep"


def run_sweep(plan: RunPlan, data: RunData, board: ProgressBoard) -> tuple[int, dict[str, Any]]:
    """Run (or resume) the sweep and publish its best trial; (exit code, final metrics)."""
    from finetune_trainer.run import publish

    sweep = plan.spec.sweep
    assert sweep is not None
    cluster.connect()
    shared = _shared(plan, data)
    seen: list[list[tally.TrialRecord]] = [[]]

    said: dict[str, str] = {}

    def on_trials(records: list[tally.TrialRecord]) -> None:
        seen[0] = records
        board.swept(tally.tally(records, sweep))
        for record in records:  # one line per trial as it starts, settles or fails
            if said.get(record.id) != record.state and record.state != "pending":
                said[record.id] = record.state
                print(f"trial {record.id} {record.state}: {_described(record, sweep.metric)}")

    stop_listening = tally.listen(on_trials)
    try:
        _tuner(plan, shared).fit()
    finally:
        stop_listening()
    records = seen[0]  # every trial Tune knows of, restored ones included
    settled = [r for r in records if r.state in ("done", "stopped", "failed")]
    out = plan.out.local_dir
    outputs.write_table(out / outputs.SWEEP_TABLE, records, sweep)
    outputs.plot_trials(out, records, sweep.metric, out / outputs.SWEEP_PLOT)
    if len(settled) < sweep.trials:
        print(
            f"interrupted: {len(settled)} of {sweep.trials} trials settled; run the same "
            "command again to continue the sweep"
        )
        return EXIT_INTERRUPTED, {}
    best = tally.best_trial(records, sweep)
    if best is None:
        print("finetune run: no trial of the sweep trained to the end")
        return EXIT_FAILED, {}
    print(f"best trial {best.id}: {sweep.metric} {best.metric:.4f} with {best.hyperparameters}")
    outputs.promote(out, best.id)
    best_job = plan.job.model_copy(update={"spec": apply_trial(plan.spec, best.hyperparameters)})
    metrics = outputs.final_metrics(out, best.id)
    metrics |= {
        "sweep_trials_done": float(sum(r.state == "done" for r in records)),
        "sweep_trials_stopped": float(sum(r.state == "stopped" for r in records)),
    }
    return 0, publish(replace(plan, job=best_job), data, metrics, 0, board)


def _described(record: tally.TrialRecord, metric: str) -> str:
    values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in record.hyperparameters.items())  # fmt: skip
    if record.metric is None:
        return values
    return f"{values}; {metric} {record.metric:.4f} at step {record.step}"


def _shared(plan: RunPlan, data: RunData) -> TrialShared:
    import ray

    from finetune_trainer.shards import split_for_ranks

    hp = plan.spec.hyperparameters
    per_rank = split_for_ranks(
        data.splits.rows,
        seed=hp.seed,
        steps_per_epoch=data.splits.steps_per_epoch,
        total_steps=data.splits.total_steps,
        global_batch=hp.batch_size,
        world_size=plan.workers.world_size,
    )
    return TrialShared(
        spec=plan.spec,
        base_dir=plan.base_dir,
        total_steps=data.splits.total_steps,
        steps_per_epoch=data.splits.steps_per_epoch,
        data=[ray.put(rows) for rows in per_rank],  # once, for every trial
        workers=plan.workers,
        run_name=plan.name,
        output_dir=plan.out.local_dir,
        checkpoint_storage=plan.out.checkpoint_storage,
    )


def _tuner(plan: RunPlan, shared: TrialShared) -> Any:
    """A new Tuner, or the one whose experiment this output already holds."""
    from ray import tune

    # The trial function only waits on its Train run, so it holds a sliver of a CPU (Tune
    # refuses an empty request), leaving whole CPUs to the workers.
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, shared=shared), {"CPU": TRIAL_DRIVER_CPU}
    )
    storage = ray_train.checkpoint_storage(plan.out.checkpoint_storage)
    path = f"{plan.out.checkpoint_storage.rstrip('/')}/{experiment_name(plan.name)}"
    filesystem = storage.get("storage_filesystem")
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        print(f"note: resuming the sweep in {path}")
        return tune.Tuner.restore(
            path,
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=filesystem,
        )
    sweep = plan.spec.sweep
    assert sweep is not None
    return tune.Tuner(
        trainable,
        param_space=tune_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            num_samples=sweep.trials,
            max_concurrent_trials=sweep.max_concurrent_trials,
            search_alg=_search(sweep, plan.spec.hyperparameters.seed),
            scheduler=_scheduler(plan, shared),
        ),
        run_config=tune.RunConfig(
            name=experiment_name(plan.name),
            **storage,
            verbose=0,
            callbacks=[tally.TallyCallback(plan.out.local_dir, sweep.metric)],
        ),
    )


def _search(sweep: api.SweepSpec, seed: int) -> Any:
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(seed=sweep.seed if sweep.seed is not None else seed)


def _scheduler(plan: RunPlan, shared: TrialShared) -> Any:
    """ASHA on the step count: a trial can be stopped at each rung from gracePeriod on."""
    from ray.tune.schedulers import FIFOScheduler

    sweep = plan.spec.sweep
    assert sweep is not None
    if sweep.scheduler.type == "none":
        return FIFOScheduler()  # type: ignore[no-untyped-call]
    every = plan.spec.evaluation.every_steps or shared.steps_per_epoch
    return tally.StoppingRecorder(
        plan.out.local_dir,
        plan.name,
        time_attr="step",
        # Past the last step: ASHA stops every trial that reaches max_t, and one that
        # trained to the end is to finish (and save its weights), not to be stopped.
        max_t=shared.total_steps + 1,
        grace_period=sweep.scheduler.grace_period or every,
        reduction_factor=sweep.scheduler.reduction_factor,
    )
