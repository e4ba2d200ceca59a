"""A real Prometheus scrapes `finetune-operator`: every dashboard query returns data,
`promtool check metrics` is clean, and the series of deleted jobs go away."""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests import dashboard_queries
from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import (
    FINETUNEJOBS,
    TEST_SETTINGS,
    Cluster,
    OperatorProcess,
    eventually,
    free_port,
)
from tests.integration.operator.prometheus_server import (
    SCRAPE_SECONDS,
    PrometheusServer,
    prometheus_scraping,
    require,
)

pytestmark = pytest.mark.integration

PROGRESS = {
    "step": 120, "totalSteps": 400, "epoch": 0.9, "percent": 30.0, "trainLoss": 1.4213,
    "evalLoss": 1.5172, "tokensPerSecond": 18250.0, "etaSeconds": 7500.0,
    # A sweep halfway: its panels need data too.
    "sweep": {"trials": 8, "done": 3, "running": 1, "stopped": 2, "failed": 0,
              "best": {"id": "a1b2c3d4", "metric": 1.3107}, "display": "5/8 (2 stopped)"},
}  # fmt: skip
# Grafana's values for the variables: a multi-value selection is a regex alternation, and
# `$__rate_interval` is at least four scrape intervals.
SELECTED = {
    "namespace": "(team-a|team-b)",
    "job": "(llama-running|llama-done|mistral-waiting)",
    "__rate_interval": f"{10 * SCRAPE_SECONDS}s",
    "__range": "10m",
}
ALL = {**SELECTED, "namespace": ".*", "job": ".*"}


def minutes_ago(minutes: float) -> str:
    moment = datetime.datetime.now(tz=datetime.UTC) - datetime.timedelta(minutes=minutes)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def patch_status(
    cluster: Cluster, resource: str, namespace: str, name: str, **status: Any
) -> None:
    group_version, plural = resource.rsplit("/", 1)
    path = f"/apis/{group_version}/namespaces/{namespace}/{plural}/{name}/status"
    await cluster.send("PATCH", path, {"status": status})


async def submit(cluster: Cluster, namespace: str, name: str, **overrides: Any) -> None:
    """A job as the API server stores it, created ten minutes ago."""
    job = MakeJob.operator(name, namespace=namespace).set_all(overrides).stored().obj()
    job["metadata"]["creationTimestamp"] = minutes_ago(10)
    await cluster.apply_job(job)


def phase_of(cluster: Cluster, namespace: str, name: str) -> str | None:
    job = cluster.get(FINETUNEJOBS, name, namespace) or {}
    phase: str | None = (job.get("status") or {}).get("phase")
    return phase


def in_phase(cluster: Cluster, namespace: str, name: str, phase: str) -> Callable[[], bool]:
    return lambda: phase_of(cluster, namespace, name) == phase


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def exports(port: int, job: str, present: bool = True) -> bool:
    """Whether the operator's /metrics has a series of this job (or, has none)."""
    return (f'job="{job}"' in scrape(port)) == present


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


@contextlib.asynccontextmanager
async def operator_serving_metrics(
    cluster: Cluster, folder: Path, resync_seconds: float = TEST_SETTINGS.resync_seconds
) -> AsyncIterator[int]:
    """`finetune-operator` with its metrics on a free port (the port is yielded)."""
    cluster.install_kuberay()
    for namespace in ("team-a", "team-b"):
        cluster.add_namespace(namespace)
    port = free_port()
    env = {"FINETUNE_RESYNC_SECONDS": str(resync_seconds)}
    process = OperatorProcess(cluster, folder, metrics_port=port, env=env)
    await process.start()
    try:
        yield port
    finally:
        process.terminate()


@pytest.fixture
async def operator_with_metrics(cluster: Cluster, tmp_path: Path) -> AsyncIterator[int]:
    async with operator_serving_metrics(cluster, tmp_path) as port:
        yield port


@pytest.fixture
async def prometheus(operator_with_metrics: int, tmp_path: Path) -> AsyncIterator[PrometheusServer]:
    async with prometheus_scraping(tmp_path, [f"127.0.0.1:{operator_with_metrics}"]) as server:
        yield server


async def jobs_in_several_phases(cluster: Cluster) -> None:
    """Running with progress, Succeeded, Pending and Failed, over two namespaces."""
    await submit(cluster, "team-a", "llama-running")
    await submit(cluster, "team-a", "llama-done")
    await submit(cluster, "team-b", "mistral-waiting")
    await submit(cluster, "team-b", "broken", **{"spec.dataset.train.format": "csv"})
    await eventually(lambda: phase_of(cluster, "team-a", "llama-done"), what="the operator")
    await patch_status(
        cluster, "ray.io/v1/rayjobs", "team-a", "llama-running",
        jobDeploymentStatus="Running", jobStatus="RUNNING", startTime=minutes_ago(8),
    )  # fmt: skip
    # As the progress poller writes it; the operator exports it after its next pass.
    await patch_status(cluster, FINETUNEJOBS, "team-a", "llama-running", progress=PROGRESS)
    await patch_status(
        cluster, "ray.io/v1/rayjobs", "team-a", "llama-done",
        jobDeploymentStatus="Complete", jobStatus="SUCCEEDED", startTime=minutes_ago(8),
        endTime=minutes_ago(0), succeeded=1,
    )  # fmt: skip
    for namespace, name, phase in [
        ("team-a", "llama-running", "Running"), ("team-a", "llama-done", "Succeeded"),
        ("team-b", "mistral-waiting", "Pending"), ("team-b", "broken", "Failed"),
    ]:  # fmt: skip
        await eventually(in_phase(cluster, namespace, name, phase), what=f"{name} {phase}")


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    cluster: Cluster, operator_with_metrics: int, prometheus: PrometheusServer
) -> None:
    await jobs_in_several_phases(cluster)
    port = operator_with_metrics
    await eventually(
        lambda: (
            'finetune_job_train_loss{job="llama-running",namespace="team-a"} 1.4213' in scrape(port)
        ),
        timeout=TEST_SETTINGS.resync_seconds * 5,
        what="the progress in /metrics after a resync",
    )

    # Labels arrive as the operator wrote them, values as the status holds them.
    def exported(expr: str) -> float | None:
        result = prometheus.query(expr)
        return float(result[0]["value"][1]) if result else None

    checks = {
        'finetune_job_train_loss{namespace="team-a", job="llama-running"}': 1.4213,
        'finetune_job_progress_ratio{namespace="team-a", job="llama-running"}': 0.3,
        'finetune_jobs{namespace="team-b", phase="Failed"}': 1,
        'finetune_jobs{namespace="team-b", phase="Pending"}': 1,
        'finetune_jobs{namespace="team-a", phase="Suspended"}': 0,
        'finetune_job_duration_seconds_count{outcome="Succeeded"}': 1,
        'finetune_job_sweep_trials{namespace="team-a", job="llama-running", state="pending"}': 2,
        'finetune_job_sweep_best_metric{namespace="team-a", job="llama-running"}': 1.3107,
    }
    await eventually(
        lambda: all(exported(expr) == value for expr, value in checks.items()),
        timeout=15, what="the operator's values in Prometheus",
    )  # fmt: skip

    dashboard = dashboard_queries.load()
    queries = [(title, target["expr"]) for title, target in dashboard_queries.targets(dashboard)]
    assert len(queries) >= 12

    def without_data() -> list[str]:
        missing = []
        for values in (SELECTED, ALL):
            for title, expr in queries:
                filled = dashboard_queries.fill(expr, values)
                if not finite(prometheus.query(filled)):
                    missing.append(f"{title}: {filled}")
        return missing

    # Rates need a few scrapes after the changes; give them time, then name what has none.
    try:
        await eventually(lambda: not without_data(), timeout=20, what="data for every query")
    except AssertionError:
        pytest.fail("queries without data:\n" + "\n".join(without_data()))

    variables = dashboard_queries.variables(dashboard)
    for name, expected in [
        ("namespace", {"team-a", "team-b"}),
        ("job", {"llama-running", "llama-done", "mistral-waiting", "broken"}),
    ]:
        selector, label = dashboard_queries.label_values_query(variables[name]["query"])
        if selector is not None:
            selector = dashboard_queries.fill(selector, ALL)
        assert expected <= set(prometheus.label_values(label, selector)), name


async def test_live_metrics_pass_promtool_without_warnings(
    cluster: Cluster, operator_with_metrics: int
) -> None:
    promtool = require("promtool")
    await jobs_in_several_phases(cluster)
    text = await eventually(
        lambda: (page := scrape(operator_with_metrics)) and "finetune_job_eval_loss{" in page and page,
        timeout=TEST_SETTINGS.resync_seconds * 5, what="every kind of series",
    )  # fmt: skip
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    for name in ("finetune_job_duration_seconds_bucket", "finetune_reconcile_errors_total",
                 "finetune_reconcile_duration_seconds_bucket", "finetune_job_attempts"):  # fmt: skip
        assert name in text


async def test_a_job_deleted_through_the_api_loses_its_series_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    # No resync within the test's time: the DELETED watch event alone must do it.
    async with (
        operator_serving_metrics(cluster, tmp_path, resync_seconds=600) as port,
        prometheus_scraping(tmp_path, [f"127.0.0.1:{port}"]) as prometheus,
    ):
        await submit(cluster, "team-a", "doomed")
        await submit(cluster, "team-a", "kept")
        await eventually(functools.partial(exports, port, "doomed"), what="doomed's series")
        await eventually(
            lambda: prometheus.query('finetune_job_attempts{job="doomed"}'), timeout=15
        )

        await cluster.send(
            "DELETE", "/apis/finetune.io/v1alpha1/namespaces/team-a/finetunejobs/doomed"
        )

        await eventually(functools.partial(exports, port, "doomed", present=False), timeout=10)
        page = scrape(port)
        assert 'finetune_jobs{namespace="team-a",phase="Pending"} 1.0' in page  # "kept" only
        assert 'job="kept"' in page
        # Prometheus marks the vanished series stale at its next scrape.
        await eventually(
            lambda: not prometheus.query('finetune_job_attempts{job="doomed"}'), timeout=15
        )


async def test_a_job_gone_without_a_watch_event_is_forgotten_by_the_resync(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with operator_serving_metrics(cluster, tmp_path) as port:
        await submit(cluster, "team-b", "ghost")
        await eventually(functools.partial(exports, port, "ghost"), what="ghost's series")

        # Gone behind the API's back, as when a watch misses the deletion.
        cluster.emulator.objects[FINETUNEJOBS, "team-b", "ghost"].delete()

        await eventually(
            functools.partial(exports, port, "ghost", present=False),
            timeout=TEST_SETTINGS.resync_seconds * 5, what="the resync to forget it",
        )  # fmt: skip
        assert 'finetune_jobs{namespace="team-b",phase="Pending"} 0.0' in scrape(port)
