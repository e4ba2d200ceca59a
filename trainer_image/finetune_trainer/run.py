"""`finetune run JOB.yaml`: the whole job on Ray — data, model, training, evaluation, outputs.

`run_command` reads like a table of contents; each step lives in its own module. Locally it
starts a small Ray instance; inside a RayJob (RAY_ADDRESS set) it joins that cluster.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_operator import api
from finetune_operator.validation import InvalidSpec, load_job_file

if TYPE_CHECKING:
    from finetune_trainer.tracker import TrackerState

STOP_AT_STEP_ENV = "FINETUNE_STOP_AT_STEP"  # test hook: act as if Ctrl-C came at this step
STAGING_ENV = "FINETUNE_STAGING_DIR"  # where s3:// outputs are written before the upload
EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


@dataclass(frozen=True)
class Output:
    local_dir: Path  # where files are written (in place, or staged for an upload)
    uri: str  # what the user named
    checkpoint_storage: str  # Ray Train storage_path: local path or s3:// URI

    @property
    def remote(self) -> bool:
        return self.uri.startswith("s3://")


def run_command(job_path: Path, *, output: Path | None, workers: int | None) -> int:
    """Run the job in `job_path`; 0 on success, 2 on bad input, 130 when interrupted."""
    from finetune_trainer.errors import USER_ERRORS

    try:
        return _run(job_path, output=output, workers=workers)
    except InvalidSpec as error:
        for problem in error.problems:  # each already reads "FILE: spec.path: reason"
            print(f"finetune run: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except USER_ERRORS as error:
        print(f"finetune run: {job_path}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(job_path: Path, *, output: Path | None, workers: int | None) -> int:
    from finetune_trainer import cluster, layout, ray_train, tracker
    from finetune_trainer.data import prepare_records, write_prepared
    from finetune_trainer.deepspeed_config import plan_batch, resolve_precision
    from finetune_trainer.history import HISTORY, read_history
    from finetune_trainer.loop import WorkerSetup
    from finetune_trainer.model import resolve_model_dir
    from finetune_trainer.model_card import MODEL_CARD, model_card
    from finetune_trainer.progress import ProgressView, summary_table
    from finetune_trainer.progress_server import ProgressBoard, serve_from_env
    from finetune_trainer.reports import (
        DATA_REPORT,
        LOSS_PLOT,
        METRICS,
        plot_loss,
        throughput,
        write_metrics,
    )
    from finetune_trainer.rows import tokenize_splits
    from finetune_trainer.upload import upload_dir

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
        _, precision_note = resolve_precision(spec.hyperparameters.precision, cuda=False,
                                              bf16_supported=False)  # fmt: skip
        workers_layout.notes.extend([precision_note] if precision_note else [])
    for note in workers_layout.notes:
        print(f"note: {note}")
    layout.check_method_supported(spec.method, workers_layout)  # before any data or model work
    plan_batch(
        spec.hyperparameters.batch_size,
        workers_layout.world_size,
        spec.hyperparameters.micro_batch_size,
    )

    model_dir = resolve_model_dir(spec.model, base_dir=base_dir)  # a bad source fails here, early

    prepared = prepare_records(spec, base_dir=base_dir)
    out.local_dir.mkdir(parents=True, exist_ok=True)
    write_prepared(prepared, out.local_dir)
    splits = tokenize_splits(prepared, spec, model_dir)
    report = prepared.report | splits.stats
    (out.local_dir / DATA_REPORT).write_text(json.dumps(report, indent=2) + "\n")

    import ray

    cluster.connect()
    progress_tracker = tracker.start_tracker(_stop_at_step())
    setup = WorkerSetup(
        spec=spec,
        base_dir=base_dir,
        total_steps=splits.total_steps,
        steps_per_epoch=splits.steps_per_epoch,
        data=ray.put(splits.rows),
        tracker=progress_tracker,
        output_dir=out.local_dir,
    )
    view = ProgressView()
    board = ProgressBoard()
    server = serve_from_env(board)  # /progress for the operator, when it asks for one
    name = ray_train.run_name(job.metadata)
    follower = _HistoryFollower(
        progress_tracker,
        view,
        board,
        out.local_dir / HISTORY,
        splits.total_steps,
        lambda step: ray_train.checkpoint_uri(out.checkpoint_storage, name, step),
    )
    # fit() runs in a thread so that Ctrl-C reaches our handler (Ray's own, installed only
    # from the main thread, would abort the run without a checkpoint).
    fitting = _Background(
        lambda: ray_train.fit(
            setup,
            layout=workers_layout,
            name=name,
            storage=out.checkpoint_storage,
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
        return EXIT_FAILED
    finally:
        signal.signal(signal.SIGINT, previous)
        state = follower.poll()
        view.stop()
        if server is not None:
            server.shutdown()

    if state.final_metrics is None and state.last_checkpoint is None:
        print("interrupted before the first checkpoint; nothing to resume from")
        return EXIT_INTERRUPTED
    if state.final_metrics is None:
        step = state.last_checkpoint
        print(
            f"interrupted: checkpoint saved at step {step} in {out.uri}/checkpoints; "
            "run the same command again to resume"
        )
        return EXIT_INTERRUPTED
    metrics = state.final_metrics | {"resumed_from_step": state.start_step or 0}
    history = read_history(out.local_dir / HISTORY)
    metrics |= throughput(history)
    write_metrics(out.local_dir / METRICS, metrics)
    plot_loss(history, out.local_dir / LOSS_PLOT)
    (out.local_dir / MODEL_CARD).write_text(model_card(job, metrics, report))
    if out.remote:
        upload_dir(out.local_dir, out.uri)
    view.console.print(summary_table(metrics, out.uri))
    return 0


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


def _on_interrupt(tracker) -> None:
    """First Ctrl-C: every rank finishes its step, saves a checkpoint and leaves. Second: abort."""
    print("\nstopping after this step and saving a checkpoint (Ctrl-C again to abort)")
    tracker.request_stop.remote()
    signal.signal(signal.SIGINT, signal.default_int_handler)


class _Background(threading.Thread):
    """Runs one call in a daemon thread and keeps what it raised for the caller."""

    def __init__(self, call) -> None:
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
    """Reads the tracker: appends rows to history.jsonl and moves the progress bar."""

    def __init__(
        self,
        tracker,
        view,
        board,
        history_path: Path,
        total_steps: int,
        checkpoint_uri: Callable[[int], str],
    ) -> None:
        self.tracker, self.view, self.board = tracker, view, board
        self.history_path, self.total_steps = history_path, total_steps
        self.checkpoint_uri = checkpoint_uri
        self.started_view = False
        self.attempts_seen = 0
        self.state: TrackerState | None = None

    def poll(self) -> TrackerState:
        import ray

        from finetune_trainer.history import append_history, truncate_history

        state: TrackerState = ray.get(self.tracker.poll.remote())
        if state.attempts > self.attempts_seen:
            self.attempts_seen = state.attempts
            # Steps after the checkpoint an attempt resumes from are trained again.
            truncate_history(self.history_path, state.resumed_at or 0)
        if state.start_step is not None and not self.started_view:
            self.started_view = True
            self.view.start(state.start_step, self.total_steps)
        append_history(self.history_path, state.rows)
        for row in state.rows:
            self.view.update(row, self.total_steps)
            self.board.update(row, self.total_steps)
        if state.last_checkpoint is not None:
            uri = self.checkpoint_uri(state.last_checkpoint)
            self.board.checkpointed(api.CheckpointRef(step=state.last_checkpoint, uri=uri))
        self.state = replace(state, rows=[])
        return self.state
