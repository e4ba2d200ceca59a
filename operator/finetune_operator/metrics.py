"""The operator's Prometheus metrics (design §5): what it knows of each job, and of itself.

Job gauges mirror each job's status as the operator last wrote it. They are produced at
scrape time from a table of per-job snapshots (the exporter pattern of Prometheus's
"custom collectors"): a job that is forgotten, or a value its status no longer carries,
simply stops being exported, with no per-label bookkeeping to leak series. Histograms and
the error counter are ordinary prometheus_client objects.

Everything hangs off one `OperatorMetrics` with its own registry, so that several operators
can run in one process (the tests do) and each serves only its own jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator

import kopf
import prometheus_client
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from finetune_operator import timeutil
from finetune_operator.api import FineTuneJobStatus, Phase, Progress, SweepProgress
from finetune_operator.kube import ApiError

# A fine-tune takes minutes (a smoke test) to days (a large model): 1 minute to 1 week.
JOB_DURATION_BUCKETS = (
    60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 16 * 3600,
    24 * 3600, 2 * 86400, 4 * 86400, 7 * 86400,
)  # fmt: skip
# A pass is a few API calls: milliseconds normally, tens of seconds when the API is slow.
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# (metric name, help, the snapshot field it exports)
JOB_GAUGES = (
    ("finetune_job_progress_ratio", "Training progress of the job, 0 to 1 (step / total steps).",
     "progress_ratio"),
    ("finetune_job_train_loss", "Latest training loss the job reported.", "train_loss"),
    ("finetune_job_eval_loss", "Latest validation loss the job reported.", "eval_loss"),
    ("finetune_job_tokens_per_second", "Non-padding tokens the job trains on per second.",
     "tokens_per_second"),
    ("finetune_job_eta_seconds", "Estimated seconds until the job's training finishes.",
     "eta_seconds"),
    ("finetune_job_attempts", "Ray clusters the job started: 0 while waiting, then 1 + retries.",
     "attempts"),
    ("finetune_job_reward_accuracy", "DPO jobs: share of the latest step's preference pairs "
     "whose chosen answer the model prefers.", "reward_accuracy"),
    ("finetune_job_eval_reward_accuracy", "DPO jobs: reward accuracy on the validation pairs, "
     "latest evaluation.", "eval_reward_accuracy"),
    ("finetune_job_sweep_best_metric", "Sweeps: the best finished trial's value of "
     "spec.sweep.metric (eval_loss unless set).", "sweep_best_metric"),
)  # fmt: skip
# A sweep's trials by state, as status.progress.sweep counts them; pending is the rest.
SWEEP_STATES = ("done", "running", "stopped", "failed", "pending")


@dataclasses.dataclass(frozen=True)
class JobSnapshot:
    """What the metrics export of one job: its status reduced to numbers."""

    phase: Phase | None = None
    progress_ratio: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    attempts: float | None = None
    reward_accuracy: float | None = None
    eval_reward_accuracy: float | None = None
    sweep_trials: dict[str, int] | None = None  # by SWEEP_STATES; None: not a sweep
    sweep_best_metric: float | None = None

    @classmethod
    def of(cls, status: FineTuneJobStatus) -> JobSnapshot:
        # Every job has an attempts series (0 before its first Ray cluster): the dashboard's
        # job list comes from it, and a job still waiting must be in that list too.
        attempts = status.attempts or 0
        progress = status.progress
        if progress is None:
            return cls(phase=status.phase, attempts=attempts)
        return cls(
            phase=status.phase,
            progress_ratio=progress_ratio(progress),
            train_loss=progress.train_loss,
            eval_loss=progress.eval_loss,
            tokens_per_second=progress.tokens_per_second,
            eta_seconds=progress.eta_seconds,
            attempts=attempts,
            reward_accuracy=progress.reward_accuracy,
            eval_reward_accuracy=progress.eval_reward_accuracy,
            sweep_trials=None if progress.sweep is None else sweep_trials(progress.sweep),
            sweep_best_metric=None
            if progress.sweep is None or progress.sweep.best is None
            else progress.sweep.best.metric,
        )


def sweep_trials(sweep: SweepProgress) -> dict[str, int]:
    """Trials per state; pending are those not yet started (never below 0)."""
    counted = {state: getattr(sweep, state) for state in SWEEP_STATES if state != "pending"}
    return counted | {"pending": max(sweep.trials - sum(counted.values()), 0)}


def progress_ratio(progress: Progress) -> float | None:
    """percent / 100, else step / totalSteps (a status written without percent)."""
    if progress.percent is not None:
        return progress.percent / 100
    if progress.step is not None and progress.total_steps:
        return progress.step / progress.total_steps
    return None


class JobCollector(Collector):
    """`finetune_jobs{namespace,phase}` and the per-job gauges, computed at scrape time."""

    def __init__(self) -> None:
        # Scrapes run on the HTTP server's thread, records on the operator's event loop.
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, str], JobSnapshot] = {}
        # A namespace whose last job is deleted keeps reporting 0 jobs rather than vanishing,
        # so that sums over namespaces drop to 0 instead of holding the last value.
        self._namespaces: set[str] = set()

    def put(self, namespace: str, name: str, snapshot: JobSnapshot) -> None:
        with self._lock:
            self._jobs[namespace, name] = snapshot
            self._namespaces.add(namespace)

    def drop(self, namespace: str, name: str) -> None:
        with self._lock:
            self._jobs.pop((namespace, name), None)

    def known(self) -> set[tuple[str, str]]:
        with self._lock:
            return set(self._jobs)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            jobs = list(self._jobs.items())
            namespaces = sorted(self._namespaces)
        yield phase_counts(jobs, namespaces)
        yield from job_gauges(jobs)
        yield sweep_trial_counts(jobs)


def phase_counts(
    jobs: Iterable[tuple[tuple[str, str], JobSnapshot]], namespaces: Iterable[str]
) -> GaugeMetricFamily:
    """How many jobs are in each phase, every phase of every namespace present (0 if none)."""
    counts = {(namespace, phase): 0 for namespace in namespaces for phase in Phase}
    for (namespace, _), snapshot in jobs:
        if snapshot.phase is not None:
            counts[namespace, snapshot.phase] = counts.get((namespace, snapshot.phase), 0) + 1
    family = GaugeMetricFamily(
        "finetune_jobs", "FineTuneJobs in each phase.", labels=["namespace", "phase"]
    )
    for (namespace, phase), count in sorted(counts.items()):
        family.add_metric([namespace, phase.value], count)
    return family


def sweep_trial_counts(jobs: list[tuple[tuple[str, str], JobSnapshot]]) -> GaugeMetricFamily:
    """`finetune_job_sweep_trials{namespace,job,state}`: every state of every sweep (0 if
    none), so that a sweep's series add up to its trials."""
    family = GaugeMetricFamily(
        "finetune_job_sweep_trials",
        "Sweeps: trials in each state (done, running, stopped by the scheduler, failed, pending).",
        labels=["namespace", "job", "state"],
    )
    for (namespace, job), snapshot in sorted(jobs, key=lambda item: item[0]):
        if snapshot.sweep_trials is not None:
            for state in SWEEP_STATES:
                family.add_metric([namespace, job, state], snapshot.sweep_trials[state])
    return family


def job_gauges(jobs: list[tuple[tuple[str, str], JobSnapshot]]) -> Iterator[GaugeMetricFamily]:
    """One family per JOB_GAUGES entry; a job without that value has no sample."""
    for name, documentation, field in JOB_GAUGES:
        family = GaugeMetricFamily(name, documentation, labels=["namespace", "job"])
        for (namespace, job), snapshot in sorted(jobs, key=lambda item: item[0]):
            value = getattr(snapshot, field)
            if value is not None:
                family.add_metric([namespace, job], float(value))
        yield family


def failed_pass(error: BaseException) -> bool:
    """Whether a reconcile pass that raised `error` failed, rather than stopped on purpose.

    kopf's PermanentError is a decision already written to status (an invalid spec), and a
    TemporaryError is a wait (for KubeRay, for a predecessor) unless an API error caused it.
    """
    if isinstance(error, asyncio.CancelledError | kopf.PermanentError):
        return False
    if isinstance(error, kopf.TemporaryError):
        return isinstance(error.__cause__, ApiError)
    return True


class OperatorMetrics:
    """Every metric of one operator, on a registry of its own (serve `registry`)."""

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        # The operator's CPU, memory and file descriptors, as any Prometheus exporter has.
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        self.jobs = JobCollector()
        self.registry.register(self.jobs)
        self.job_duration = prometheus_client.Histogram(
            "finetune_job_duration_seconds",
            "Seconds from a FineTuneJob's creation until it succeeded or failed.",
            ["outcome"],
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )
        # Known label values start at 0, so that the first finished job is an increase.
        for phase in (Phase.SUCCEEDED, Phase.FAILED):
            self.job_duration.labels(outcome=phase.value)
        self.reconcile_duration = prometheus_client.Histogram(
            "finetune_reconcile_duration_seconds",
            "Seconds one reconcile pass of one FineTuneJob took.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = prometheus_client.Counter(
            "finetune_reconcile_errors",
            "Reconcile passes that failed on an API, network or unexpected error.",
            registry=self.registry,
        )

    def record_job(self, namespace: str, name: str, status: FineTuneJobStatus) -> None:
        self.jobs.put(namespace, name, JobSnapshot.of(status))

    def forget_job(self, namespace: str, name: str) -> None:
        self.jobs.drop(namespace, name)

    def known_jobs(self) -> set[tuple[str, str]]:
        return self.jobs.known()

    def record_finished(self, status: FineTuneJobStatus, created: str | None) -> None:
        """Observe a job that has just finished, once (call it on the pass that ends it)."""
        if status.phase is None or not status.phase.is_terminal() or not status.completion_time:
            return
        since = created or status.start_time
        if not since:
            return
        seconds = (timeutil.parse(status.completion_time) - timeutil.parse(since)).total_seconds()
        self.job_duration.labels(outcome=status.phase.value).observe(max(seconds, 0.0))

    @contextlib.asynccontextmanager
    async def timed_pass(self) -> AsyncIterator[None]:
        """Time one reconcile pass, and count it as an error if it failed."""
        started = time.perf_counter()
        try:
            yield
        except BaseException as error:  # re-raised: only looked at
            if failed_pass(error):
                self.reconcile_errors.inc()
            raise
        finally:
            self.reconcile_duration.observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        """The text a scrape of this registry returns."""
        return prometheus_client.generate_latest(self.registry)

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        """Serve /metrics on `port` from a background thread (prometheus_client's server)."""
        prometheus_client.start_http_server(port, addr=address, registry=self.registry)
