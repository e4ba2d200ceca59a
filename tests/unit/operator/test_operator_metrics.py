"""The operator's metrics: what a scrape of /metrics shows for jobs and reconcile passes."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from finetune_operator.api import FineTuneJobStatus
from finetune_operator.children import job_path, rayjob_path
from finetune_operator.context import Context
from finetune_operator.kube import ApiError
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.reconcile import reconcile
from finetune_operator.settings import Settings
from prometheus_client.parser import text_string_to_metric_families

from tests.factories import MakeJob
from tests.unit.operator.fake_kube import FakeKube

Sample = tuple[str, tuple[tuple[str, str], ...]]


def scrape(metrics: OperatorMetrics) -> dict[Sample, float]:
    """Every sample of one scrape, keyed by (name, sorted labels)."""
    samples = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def job_samples(metrics: OperatorMetrics, namespace: str, job: str) -> dict[str, float]:
    """The per-job gauges of one job: {metric name: value}."""
    wanted = (("job", job), ("namespace", namespace))
    return {name: value for (name, labels), value in scrape(metrics).items() if labels == wanted}


def phase_counts(metrics: OperatorMetrics, namespace: str) -> dict[str, float]:
    return {
        dict(labels)["phase"]: value
        for (name, labels), value in scrape(metrics).items()
        if name == "finetune_jobs" and dict(labels)["namespace"] == namespace
    }


def status(**fields: Any) -> FineTuneJobStatus:
    return FineTuneJobStatus.model_validate(fields)


FULL_PROGRESS = {
    "step": 30, "totalSteps": 100, "percent": 30.0, "trainLoss": 1.25, "evalLoss": 1.5,
    "tokensPerSecond": 2048.0, "etaSeconds": 600.0,
}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"phase": "Pending"}, {"finetune_job_attempts": 0}),
        ({"phase": "Initializing", "attempts": 1}, {"finetune_job_attempts": 1}),
        (
            {"phase": "Running", "attempts": 2, "progress": FULL_PROGRESS},
            {
                "finetune_job_progress_ratio": 0.3, "finetune_job_train_loss": 1.25,
                "finetune_job_eval_loss": 1.5, "finetune_job_tokens_per_second": 2048.0,
                "finetune_job_eta_seconds": 600.0, "finetune_job_attempts": 2,
            },
        ),
        # Before the first evaluation there is no eval loss: no sample, not a stale or 0 one.
        (
            {"phase": "Running", "attempts": 1, "progress": {"step": 1, "percent": 1.0, "trainLoss": 6.5}},
            {"finetune_job_progress_ratio": 0.01, "finetune_job_train_loss": 6.5, "finetune_job_attempts": 1},
        ),
        ({"phase": "Running", "attempts": 1, "progress": {"step": 50, "totalSteps": 200}},
         {"finetune_job_progress_ratio": 0.25, "finetune_job_attempts": 1}),
        ({"phase": "Running", "attempts": 1, "progress": {"step": 0, "totalSteps": 0}}, {"finetune_job_attempts": 1}),
        (
            {"phase": "Succeeded", "attempts": 1, "progress": {"percent": 100.0, "etaSeconds": 0.0}},
            {"finetune_job_progress_ratio": 1.0, "finetune_job_eta_seconds": 0.0, "finetune_job_attempts": 1},
        ),
    ],
    ids=["pending", "initializing", "running", "no-eval-yet", "steps-no-percent", "no-steps-planned", "succeeded"],
)  # fmt: skip
def test_job_gauges_show_what_the_status_holds(fields, expected) -> None:
    metrics = OperatorMetrics()
    metrics.record_job("team-a", "llama", status(**fields))
    assert job_samples(metrics, "team-a", "llama") == pytest.approx(expected)


def test_a_value_the_status_no_longer_holds_stops_being_exported() -> None:
    metrics = OperatorMetrics()
    metrics.record_job("team-a", "llama", status(phase="Running", progress=FULL_PROGRESS))
    metrics.record_job("team-a", "llama", status(phase="Initializing", attempts=2))
    assert job_samples(metrics, "team-a", "llama") == {"finetune_job_attempts": 2}


def sweep_samples(metrics: OperatorMetrics, namespace: str, job: str) -> dict[str, float]:
    """`finetune_job_sweep_trials` of one job: {state: trials}."""
    return {
        dict(labels)["state"]: value
        for (name, labels), value in scrape(metrics).items()
        if name == "finetune_job_sweep_trials" and dict(labels)["job"] == job
        and dict(labels)["namespace"] == namespace
    }  # fmt: skip


def test_a_sweep_exports_its_trials_by_state_and_its_best_metric() -> None:
    metrics = OperatorMetrics()
    sweep = {"trials": 8, "done": 3, "running": 1, "stopped": 2, "failed": 1,
             "best": {"id": "a1b2c3d4", "metric": 1.3107}}  # fmt: skip
    metrics.record_job("team-a", "sweep", status(phase="Running", progress={"sweep": sweep}))
    # Every state has a series, pending included: a stacked panel adds up to the trials.
    assert sweep_samples(metrics, "team-a", "sweep") == {
        "done": 3, "running": 1, "stopped": 2, "failed": 1, "pending": 1,
    }  # fmt: skip
    assert job_samples(metrics, "team-a", "sweep")["finetune_job_sweep_best_metric"] == 1.3107


def test_a_sweep_before_its_first_finished_trial_has_counts_but_no_best() -> None:
    metrics = OperatorMetrics()
    sweep = {"trials": 4, "running": 1}
    metrics.record_job("team-a", "sweep", status(phase="Running", progress={"sweep": sweep}))
    assert sweep_samples(metrics, "team-a", "sweep")["pending"] == 3
    assert "finetune_job_sweep_best_metric" not in job_samples(metrics, "team-a", "sweep")


def test_a_job_without_a_sweep_has_no_sweep_series() -> None:
    metrics = OperatorMetrics()
    metrics.record_job("team-a", "llama", status(phase="Running", progress=FULL_PROGRESS))
    assert sweep_samples(metrics, "team-a", "llama") == {}


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ([], {}),
        (
            [("team-a", "a", "Running"), ("team-a", "b", "Running"), ("team-a", "c", "Failed")],
            {"team-a": {"Pending": 0, "Initializing": 0, "Running": 2, "Succeeded": 0, "Failed": 1, "Suspended": 0}},
        ),
        (
            [("team-a", "a", "Pending"), ("team-b", "a", "Suspended")],
            {
                "team-a": {"Pending": 1, "Initializing": 0, "Running": 0, "Succeeded": 0, "Failed": 0, "Suspended": 0},
                "team-b": {"Pending": 0, "Initializing": 0, "Running": 0, "Succeeded": 0, "Failed": 0, "Suspended": 1},
            },
        ),
    ],
    ids=["no-jobs", "one-namespace", "two-namespaces-same-name"],
)  # fmt: skip
def test_jobs_are_counted_by_namespace_and_phase_every_phase_present(jobs, expected) -> None:
    metrics = OperatorMetrics()
    for namespace, name, phase in jobs:
        metrics.record_job(namespace, name, status(phase=phase))
    for namespace, counts in expected.items():
        assert phase_counts(metrics, namespace) == counts
    namespaces = {
        dict(labels)["namespace"] for (name, labels) in scrape(metrics) if name == "finetune_jobs"
    }
    assert namespaces == set(expected)


def test_a_job_that_moves_on_is_counted_once_in_its_new_phase() -> None:
    metrics = OperatorMetrics()
    metrics.record_job("team-a", "llama", status(phase="Running"))
    metrics.record_job("team-a", "llama", status(phase="Succeeded"))
    counts = phase_counts(metrics, "team-a")
    assert (counts["Running"], counts["Succeeded"]) == (0, 1)


def test_a_forgotten_job_loses_its_series_and_its_namespace_counts_zero() -> None:
    metrics = OperatorMetrics()
    metrics.record_job(
        "team-a", "llama", status(phase="Running", attempts=1, progress=FULL_PROGRESS)
    )
    metrics.record_job("team-a", "other", status(phase="Pending"))
    metrics.forget_job("team-a", "llama")
    assert job_samples(metrics, "team-a", "llama") == {}
    assert phase_counts(metrics, "team-a")["Running"] == 0
    metrics.forget_job("team-a", "other")
    assert set(phase_counts(metrics, "team-a").values()) == {0}
    assert metrics.known_jobs() == set()


def duration(metrics: OperatorMetrics, outcome: str) -> tuple[float, float]:
    """(count, sum) of finetune_job_duration_seconds for one outcome."""
    samples = scrape(metrics)
    labels = (("outcome", outcome),)
    return (
        samples["finetune_job_duration_seconds_count", labels],
        samples["finetune_job_duration_seconds_sum", labels],
    )


@pytest.mark.parametrize(
    ("fields", "created", "expected"),
    [
        ({"phase": "Succeeded", "startTime": "2026-01-01T00:10:00Z", "completionTime": "2026-01-01T02:00:00Z"},
         "2026-01-01T00:00:00Z", {"Succeeded": (1, 7200), "Failed": (0, 0)}),
        # Without a creation time (never, from a real API server) the start time serves.
        ({"phase": "Failed", "startTime": "2026-01-01T00:10:00Z", "completionTime": "2026-01-01T00:11:30Z"},
         None, {"Succeeded": (0, 0), "Failed": (1, 90)}),
        ({"phase": "Running", "startTime": "2026-01-01T00:10:00Z"},
         "2026-01-01T00:00:00Z", {"Succeeded": (0, 0), "Failed": (0, 0)}),
        ({"phase": "Failed", "completionTime": "2026-01-01T00:11:30Z"},
         None, {"Succeeded": (0, 0), "Failed": (0, 0)}),
    ],
    ids=["succeeded", "failed-without-creation-time", "not-finished", "no-start-known"],
)  # fmt: skip
def test_a_finished_job_is_timed_from_creation_to_completion(fields, created, expected) -> None:
    metrics = OperatorMetrics()
    metrics.record_finished(status(**fields), created)
    for outcome, (count, total) in expected.items():
        assert duration(metrics, outcome) == (count, total)


def test_job_durations_fall_in_buckets_from_minutes_to_days() -> None:
    metrics = OperatorMetrics()
    for hours in (0.05, 3, 30):
        end = (
            f"2026-01-0{1 + int(hours // 24)}T{int(hours % 24):02d}:{int(hours * 60 % 60):02d}:00Z"
        )
        metrics.record_finished(
            status(phase="Succeeded", completionTime=end), "2026-01-01T00:00:00Z"
        )
    buckets = {
        dict(labels)["le"]: value
        for (name, labels), value in scrape(metrics).items()
        if name == "finetune_job_duration_seconds_bucket" and dict(labels)["outcome"] == "Succeeded"
    }
    assert (buckets["300.0"], buckets["14400.0"], buckets["86400.0"], buckets["172800.0"]) == (
        1,
        2,
        2,
        3,
    )


async def timed(metrics: OperatorMetrics, error: BaseException | None) -> None:
    try:
        async with metrics.timed_pass():
            if error is not None:
                raise error
    except BaseException as raised:  # the test raised it on purpose
        assert raised is error


def temporary_from_api_error() -> kopf.TemporaryError:
    try:
        try:
            raise ApiError(503, "GET", "/apis", "unavailable")
        except ApiError as cause:
            raise kopf.TemporaryError("retry", delay=1) from cause
    except kopf.TemporaryError as error:
        return error


@pytest.mark.parametrize(
    ("error", "counted"),
    [
        (None, 0),
        (kopf.PermanentError("invalid spec"), 0),
        (kopf.TemporaryError("waiting for KubeRay", delay=1), 0),
        (asyncio.CancelledError(), 0),
        (temporary_from_api_error(), 1),
        (ApiError(403, "GET", "/apis", "forbidden"), 1),
        (OSError("connection reset"), 1),
        (KeyError("metadata"), 1),
    ],
    ids=["ok", "permanent", "waiting", "cancelled", "transient-api", "api", "network", "bug"],
)
async def test_every_pass_is_timed_and_only_failures_count_as_errors(error, counted) -> None:
    metrics = OperatorMetrics()
    await timed(metrics, error)
    samples = scrape(metrics)
    assert samples["finetune_reconcile_duration_seconds_count", ()] == 1
    assert samples["finetune_reconcile_errors_total", ()] == counted


# ------------------------------------------------------------- through a reconcile pass

NS, NAME = "team-a", "llama"


def kube_with_job() -> FakeKube:
    kube = FakeKube()
    kube.put(job_path(NS, NAME), MakeJob.operator(NAME, namespace=NS).stored().obj())
    return kube


async def one_pass(context: Context) -> None:
    try:
        await reconcile(context, NS, NAME)
    finally:
        for handle in context.wakeups.values():
            handle.cancel()


async def test_a_pass_exports_the_status_it_leaves_including_progress_written_by_others() -> None:
    kube = kube_with_job()
    context = Context(settings=Settings(trainer_image="registry.local/t:1"), client=kube)
    await one_pass(context)
    assert phase_counts(context.metrics, NS)["Pending"] == 1
    kube.objects[rayjob_path(NS, NAME)]["status"] = {
        "jobDeploymentStatus": "Running",
        "jobStatus": "RUNNING",
    }
    kube.objects[job_path(NS, NAME)]["status"]["progress"] = (
        FULL_PROGRESS  # as the poller writes it
    )
    await one_pass(context)
    assert phase_counts(context.metrics, NS)["Running"] == 1
    assert job_samples(context.metrics, NS, NAME)["finetune_job_train_loss"] == 1.25


async def test_the_pass_that_finishes_a_job_times_it_once() -> None:
    kube = kube_with_job()
    context = Context(settings=Settings(trainer_image="registry.local/t:1"), client=kube)
    await one_pass(context)
    kube.objects[rayjob_path(NS, NAME)]["status"] = {
        "jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED",
        "startTime": "2026-01-01T00:01:00Z", "endTime": "2026-01-01T03:00:00Z",
    }  # fmt: skip
    for _ in range(3):  # later passes (a resync, an operator restart) see it finished already
        await one_pass(context)
    assert duration(context.metrics, "Succeeded") == (1, 3 * 3600)
    assert phase_counts(context.metrics, NS)["Succeeded"] == 1


async def test_a_deleted_job_is_forgotten_by_its_next_pass() -> None:
    kube = kube_with_job()
    context = Context(settings=Settings(trainer_image="registry.local/t:1"), client=kube)
    await one_pass(context)
    del kube.objects[job_path(NS, NAME)]
    await one_pass(context)
    assert context.metrics.known_jobs() == set()
    assert set(phase_counts(context.metrics, NS).values()) == {0}
