"""The generated Grafana dashboard: fresh, complete, every query scoped and sourced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from finetune_operator import dashboard

from tests import dashboard_queries
from tests.dashboard_queries import ROOT

# Every metric of design §5 is read by at least one panel.
METRICS = [
    "finetune_jobs", "finetune_job_progress_ratio", "finetune_job_train_loss",
    "finetune_job_eval_loss", "finetune_job_tokens_per_second", "finetune_job_eta_seconds",
    "finetune_job_attempts", "finetune_job_duration_seconds", "finetune_reconcile_duration_seconds",
    "finetune_reconcile_errors_total", "finetune_job_sweep_trials", "finetune_job_sweep_best_metric",
]  # fmt: skip
PER_JOB = [name for name in METRICS if name.startswith("finetune_job_") and "duration" not in name]


def test_checked_in_dashboard_is_fresh() -> None:
    assert dashboard_queries.DASHBOARD.read_text() == dashboard.render(), "run make generate"
    assert dashboard_queries.DASHBOARD == ROOT / dashboard.OUTPUT_PATH


def test_check_fails_on_a_missing_or_stale_file_and_passes_once_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert dashboard.main(["--check"]) == 1
    assert "stale: run `make generate`" in capsys.readouterr().err
    assert dashboard.main([]) == 0
    assert dashboard.main(["--check"]) == 0
    (tmp_path / dashboard.OUTPUT_PATH).write_text("{}\n")
    assert dashboard.main(["--check"]) == 1


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric_has_a_panel(metric: str) -> None:
    exprs = [target["expr"] for _, target in dashboard_queries.targets(dashboard_queries.load())]
    assert any(metric in expr for expr in exprs), metric


@pytest.mark.parametrize(
    "title",
    [
        "Jobs by phase", "Jobs finished", "Progress", "Time left (ETA)", "Train vs eval loss",
        "Tokens per second", "Attempts and retries", "Job duration (creation to finish)",
        "Reconcile latency", "Reconcile passes and errors", "Sweep trials", "Best trial so far",
    ],
)  # fmt: skip
def test_the_panels_users_asked_for_are_there(title: str) -> None:
    titles = [panel["title"] for panel in dashboard_queries.panels(dashboard_queries.load())]
    assert title in titles


def test_per_job_queries_follow_the_namespace_and_job_variables() -> None:
    for title, target in dashboard_queries.targets(dashboard_queries.load()):
        expr = target["expr"]
        if any(name in expr for name in PER_JOB):
            assert 'namespace=~"$namespace"' in expr and 'job=~"$job"' in expr, title
        if "finetune_jobs{" in expr:
            assert 'namespace=~"$namespace"' in expr, title


def test_variables_come_from_our_metrics_and_a_prometheus_data_source() -> None:
    board = dashboard_queries.load()
    found = dashboard_queries.variables(board)
    assert list(found) == ["datasource", "namespace", "job"]
    assert (found["datasource"]["type"], found["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert dashboard_queries.label_values_query(found["namespace"]["query"]) == (
        "finetune_jobs", "namespace",
    )  # fmt: skip
    selector, label = dashboard_queries.label_values_query(found["job"]["query"])
    assert (selector, label) == ('finetune_job_attempts{namespace=~"$namespace"}', "job")
    for name in ("namespace", "job"):
        assert found[name]["multi"] and found[name]["includeAll"], name
    for title, target in dashboard_queries.targets(board):
        assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title


def test_panels_have_unique_ids_and_fit_the_grid() -> None:
    panels = list(dashboard_queries.panels(dashboard_queries.load()))
    ids = [panel["id"] for panel in panels]
    assert len(set(ids)) == len(ids)
    for panel in panels:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]


def test_the_operator_runs_without_the_dashboard_sdk() -> None:
    code = (
        "import sys\nimport finetune_operator.main, finetune_operator.cli\n"
        "print('grafana_foundation_sdk' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
