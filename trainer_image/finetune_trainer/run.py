"""`finetune run JOB.yaml`: the whole job on Ray: plan → data → train → publish.

`_run` reads like a table of contents; each step is one function below it, and the work
itself lives in its own module. Locally a small Ray instance starts in the background once
the job is planned, while the data is prepared (a refused run prints only its own error),
and ends once training does, while the outputs are written; inside a RayJob (RAY_ADDRESS
set) it joins that cluster first, because the cluster's resources decide the worker layout.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_operator import api
from finetune_operator.errors import EXIT_BAD_INPUT, UserError
from finetune_operator.validation import InvalidSpec, load_job_file

from finetune_trainer import cluster, layout, lineage, ray_train, retention, tracker
from finetune_trainer.history import HISTORY, HistoryLog, read_history
from finetune_trainer.model_card import MODEL_CARD, model_card
from finetune_trainer.overlap import check_output_clear_of_sources
from finetune_trainer.progress_server import ProgressBoard, final_result, serving
from finetune_trainer.reports import LOSS_PLOT, METRICS, plot_loss, throughput, write_metrics
from finetune_trainer.serving.publish import write_serving
from finetune_trainer.storage import local_errors
from finetune_trainer.upload import upload_dir

if TYPE_CHECKING:
    from finetune_trainer.progress import ProgressView
    from finetune_trainer.rows import Splits
    from finetune_trainer.tracker import TrackerState

STOP_AT_STEP_ENV = "FINETUNE_STOP_AT_STEP"  # test hook: act as if Ctrl-C came at this step
STAGING_ENV = "FINETUNE_STAGING_DIR"  # where s3:// outputs are written before the upload
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130


@dataclass(frozen=True)
class Output:
    local_dir: Path  # where files are written (in place, or staged for an upload)
    uri: str  # what the user named
    checkpoint_storage: str  # Ray Train storage_path: local path or s3:// URI

    @property
    def remote(self) -> bool:
        return self.uri.startswith("s3://")


@dataclass(frozen=True)
class RunPlan:
    """The job, checked against this machine or cluster before any data or model work."""

    job: api.FineTuneJob
    base_dir: Path  # the job file's folder: relative sources resolve against it
    out: Output
    workers: layout.WorkerLayout
    model_dir: Path  # the base model's folder (downloaded when remote)
    local: bool  # no RayJob around us: Ray starts here, after planning, before the data
    fresh: bool = False  # --fresh: move this run's old checkpoints aside instead of resuming

    @property
    def spec(self) -> api.FineTuneJobSpec:
        return self.job.spec

    @property
    def name(self) -> str:
        return ray_train.run_name(self.job.metadata)

    def checkpoint_uri(self, step: int) -> str:
        """In the output's own terms: pvc://claim/... stays pvc://, not a mount path."""
        return ray_train.checkpoint_uri(f"{self.out.uri}/checkpoints", self.name, step)


@dataclass(frozen=True)
class RunData:
    splits: Splits  # tokenised rows and the step counts they make
    report: dict[str, Any]  # data_report.json: the data stage's counts and the token stats
    lineage: lineage.Lineage  # what the checkpoints of this run are trained from


def run_command(
    job_path: Path, *, output: Path | None, workers: int | None, fresh: bool = False
) -> int:
    """Run the job in `job_path`; 0 on success, 2 on bad input, 130 when interrupted."""
    try:
        return _run(job_path, output=output, workers=workers, fresh=fresh)
    except InvalidSpec as error:
        for problem in error.problems:  # each already reads "FILE: spec.path: reason"
            print(f"finetune run: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UserError as error:  # anything else is a bug and keeps its traceback
        print(f"finetune run: {job_path}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        # A run refused while the local instance was starting: its error is out first, and
        # nothing of Ray's follows it or stays up.
        cluster.stop_local()


def _run(job_path: Path, *, output: Path | None, workers: int | None, fresh: bool) -> int:
    from finetune_trainer.progress import ProgressView, summary_table

    plan = plan_run(job_path, output=output, workers=workers, fresh=fresh)
    if plan.local:
        cluster.start_local()  # seconds of process start-ups, beside the data stage
    data = prepare_data(plan)
    claim_checkpoints(plan, data)
    view, board = ProgressView(), ProgressBoard()
    if plan.spec.sweep is not None:  # several trials on Ray Tune, then the best published
        return _sweep(plan, data, view, board)
    with serving(board):  # /progress for the operator, when it asks for one
        state = train(plan, data, view, board)
        cluster.stop_local(wait=False)  # the outputs need no Ray: it ends while they are written
        if state is None:
            return EXIT_FAILED
        if state.final_metrics is None:
            return _interrupted(plan, state)
        metrics = publish(plan, data, state.final_metrics, state.start_step or 0, board)
    view.console.print(summary_table(metrics, plan.out.uri))
    for warning in retention.warnings(plan.spec, metrics):  # the model is written: exit 0
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _sweep(plan: RunPlan, data: RunData, view: ProgressView, board: ProgressBoard) -> int:
    from finetune_trainer.progress import summary_table
    from finetune_trainer.sweep.driver import run_sweep

    with serving(board):
        code, metrics = run_sweep(plan, data, board)
    if code == 0:
        view.console.print(summary_table(metrics, plan.out.uri))
    return code


def plan_run(
    job_path: Path, *, output: Path | None, workers: int | None, fresh: bool = False
) -> RunPlan:
    """Parse the job, lay out the workers and refuse what cannot run, before any real work."""
    from finetune_trainer.deepspeed_config import plan_batch
    from finetune_trainer.model import resolve_model_dir
    from finetune_trainer.precision import bf16_native, resolve_precision

    job = load_job_file(job_path)
    spec, base_dir = job.spec, job_path.resolve().parent
    out = resolve_output(spec.output.destination, output, base_dir)
    local = not cluster.in_cluster()
    if not local:
        cluster.connect()  # the cluster's resources decide the layout
    gpus, cpus = cluster.available_resources()
    workers_layout = layout.plan_workers(
        spec.resources, workers_override=workers, cluster_gpus=gpus, cluster_cpus=cpus, local=local
    )
    if not workers_layout.use_gpu:  # on GPUs the workers decide, since only they see the device
        # In a cluster the CPU workers may run on other machines: there they decide bf16.
        bf16 = bf16_native(cuda=False) or not local
        _, precision_note = resolve_precision(spec.hyperparameters.precision, cuda=False,
                                              bf16_supported=bf16)  # fmt: skip
        workers_layout.notes.extend([precision_note] if precision_note else [])
    for note in workers_layout.notes:
        print(f"note: {note}")
    layout.check_method_supported(spec.method, workers_layout)  # before any data or model work
    check_output_clear_of_sources(
        out.uri if out.remote else str(out.local_dir), spec, base_dir=base_dir, what="output"
    )
    hp = spec.hyperparameters
    plan_batch(hp.batch_size, workers_layout.world_size, hp.micro_batch_size)
    model_dir = resolve_model_dir(spec.model, base_dir=base_dir)  # a bad source fails here, early
    return RunPlan(job, base_dir, out, workers_layout, model_dir, local, fresh)


def prepare_data(plan: RunPlan) -> RunData:
    """Clean, split and tokenise the records; refuse checkpoints another job made; write
    the splits and data_report.json."""
    from finetune_trainer.data import prepare_records, write_prepared
    from finetune_trainer.data.engines import workers_from_env
    from finetune_trainer.rows import tokenize_splits

    # Before the costly stage: a bad retention set fails the run at once.
    kept_rows, kept_report = retention.prepare(
        plan.spec, base_dir=plan.base_dir, model_dir=plan.model_dir
    )
    # Redaction runs on Ray Data, so Ray is up (started here, locally) first.
    workers = workers_from_env(redact=plan.spec.dataset.cleaning.redact_pii)
    prepared = prepare_records(plan.spec, base_dir=plan.base_dir, workers=workers)
    splits = tokenize_splits(prepared, plan.spec, plan.model_dir)
    splits.rows["retention"] = kept_rows
    records = {"train": prepared.train, "validation": prepared.validation}
    run_lineage = lineage.lineage_of(plan.spec, records, plan.workers.world_size)
    # Before anything is written: a refused run leaves the old run's files as they were.
    lineage.check(plan.out.checkpoint_storage, plan.name, run_lineage, fresh=plan.fresh,
                  zero_stage=plan.spec.deepspeed.zero_stage)  # fmt: skip
    # Written once, after tokenising: the report carries the rows' token counts too.
    report = prepared.report | splits.stats | kept_report
    write_prepared(replace(prepared, report=report), plan.out.local_dir)
    return RunData(splits, report, run_lineage)


def claim_checkpoints(plan: RunPlan, data: RunData) -> None:
    """Tie the run's checkpoints to this job (after moving old ones aside under --fresh)."""
    moved = lineage.claim(plan.out.checkpoint_storage, plan.name, data.lineage, fresh=plan.fresh)
    if moved is not None:
        print(f"note: --fresh: moved the old checkpoints to {moved}; training starts at step 0")


def train(
    plan: RunPlan, data: RunData, view: ProgressView, board: ProgressBoard
) -> TrackerState | None:
    """Fit on Ray while following the tracker; its final state, or None when the run failed."""
    import ray

    from finetune_trainer.loop import WorkerSetup
    from finetune_trainer.shards import split_for_ranks

    if plan.local:
        cluster.connect()
    stop_at_step = _stop_at_step()
    progress_tracker = tracker.start_tracker(stop_at_step)
    per_rank = split_for_ranks(
        data.splits.rows,
        seed=plan.spec.hyperparameters.seed,
        steps_per_epoch=data.splits.steps_per_epoch,
        total_steps=data.splits.total_steps,
        global_batch=plan.spec.hyperparameters.batch_size,
        world_size=plan.workers.world_size,
    )
    setup = WorkerSetup(
        spec=plan.spec,
        base_dir=plan.base_dir,
        total_steps=data.splits.total_steps,
        steps_per_epoch=data.splits.steps_per_epoch,
        data=[ray.put(rows) for rows in per_rank],  # each rank only the rows it reads
        tracker=progress_tracker,
        output_dir=plan.out.local_dir,
        stop_at_step=stop_at_step,
    )
    follower = _HistoryFollower(progress_tracker, plan, data.splits.total_steps, view, board)
    # fit() runs in a thread so that Ctrl-C reaches our handler (Ray's own, installed only
    # from the main thread, would abort the run without a checkpoint).
    fitting = _Background(
        lambda: ray_train.fit(
            setup, layout=plan.workers, name=plan.name, storage=plan.out.checkpoint_storage
        )
    )
    previous = signal.signal(signal.SIGINT, lambda *_: _on_interrupt(progress_tracker))
    try:
        fitting.start()
        while fitting.is_alive():
            fitting.join(timeout=0.5)
            follower.poll()
        fitting.reraise()
    except ray_train.training_failures() as error:
        print(f"finetune run: training failed: {error}", file=sys.stderr)
        return None
    finally:
        signal.signal(signal.SIGINT, previous)
        state = follower.poll()
        view.stop()
    return state


def publish(
    plan: RunPlan,
    data: RunData,
    final_metrics: dict[str, Any],
    resumed_from_step: int,
    board: ProgressBoard,
) -> dict[str, Any]:
    """metrics.json, loss.png, serving/ and the model card beside the weights; the upload;
    the result."""
    out = plan.out.local_dir
    history = read_history(out / HISTORY)
    metrics = final_metrics | {"resumed_from_step": resumed_from_step} | throughput(history)
    with local_errors(out):  # a full disk or a read-only folder names the path
        write_metrics(out / METRICS, metrics)
        plot_loss(history, out / LOSS_PLOT)
        serving = write_serving(out, plan.job, plan.out.uri)  # before the upload: it goes too
        (out / MODEL_CARD).write_text(model_card(plan.job, metrics, data.report, serving))
    if plan.out.remote:
        upload_dir(out, plan.out.uri)
    result = final_result(plan.out.uri, metrics, serving.manifests_uri)
    kept = retention.results(plan.spec, metrics)
    board.finished(result.model_copy(update={"retention": kept or None}))
    return metrics


def _interrupted(plan: RunPlan, state: TrackerState) -> int:
    if state.last_checkpoint is None:
        print("interrupted before the first checkpoint; nothing to resume from")
    else:
        print(
            f"interrupted: checkpoint saved at step {state.last_checkpoint} in "
            f"{plan.out.uri}/checkpoints; run the same command again to resume"
        )
    return EXIT_INTERRUPTED


def resolve_output(destination: str, override: Path | None, base_dir: Path) -> Output:
    """--output wins; s3:// is staged locally, then uploaded; pvc:// and paths are used in place."""
    from finetune_trainer.storage import resolve_local

    if override is not None:
        local = override.resolve()
        return Output(local, str(local), str(local / "checkpoints"))
    if destination.startswith("s3://"):
        uri = destination.rstrip("/")
        staging_root = Path(
            os.environ.get(STAGING_ENV, Path.home() / ".cache" / "finetune" / "staging")
        )
        local = staging_root / uri.removeprefix("s3://").replace("/", "_")
        return Output(local, uri, f"{uri}/checkpoints")
    local = resolve_local(destination, base_dir=base_dir).resolve()
    # A plain path is reported resolved: the spec's is relative to the job file, not to you.
    uri = destination if "://" in destination else str(local)
    return Output(local, uri, str(local / "checkpoints"))


def _stop_at_step() -> int | None:
    value = os.environ.get(STOP_AT_STEP_ENV)
    return int(value) if value else None


def _on_interrupt(progress_tracker: Any) -> None:
    """First Ctrl-C: every rank finishes its step, saves a checkpoint and leaves. Second: abort."""
    print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)")
    progress_tracker.request_stop.remote()
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _Background(threading.Thread):
    """Runs one call in a daemon thread and keeps what it raised for the caller."""

    def __init__(self, call: Callable[[], object]) -> None:
        super().__init__(daemon=True, name="finetune-fit")
        self.call = call
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.call()
        except BaseException as error:  # handed to the main thread by reraise()
            self.error = error

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class _HistoryFollower:
    """Reads the tracker: appends rows to history.jsonl, moves the bar, updates /progress."""

    def __init__(
        self,
        progress_tracker: Any,
        plan: RunPlan,
        total_steps: int,
        view: ProgressView,
        board: ProgressBoard,
    ) -> None:
        self.tracker, self.plan, self.total_steps = progress_tracker, plan, total_steps
        self.view, self.board = view, board
        self.history = HistoryLog(plan.out.local_dir / HISTORY)
        self.started_view = False

    def poll(self) -> TrackerState:
        import ray

        state: TrackerState = ray.get(self.tracker.poll.remote())
        rows = self.history.take(state)
        if state.start_step is not None and not self.started_view:
            self.started_view = True
            self.view.start(state.start_step, self.total_steps)
        for row in rows:
            self.view.update(row, self.total_steps)
            self.board.update(row, self.total_steps)
        if state.last_checkpoint is not None:
            uri = self.plan.checkpoint_uri(state.last_checkpoint)
            self.board.checkpointed(api.CheckpointRef(step=state.last_checkpoint, uri=uri))
        return state
