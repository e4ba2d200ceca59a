"""Generate the Grafana dashboard from code (grafana-foundation-sdk), like the CRD from api.py.

`python -m finetune_operator.dashboard [--check]` writes the chart's dashboard JSON, or fails
when the checked-in file is stale. A development tool: the SDK is in the `dev` extra and the
operator never imports this module, so its image does not need it.

Every query reads the metrics of `metrics.py`; the integration test runs each of them,
template variables filled in, against a real Prometheus scraping the operator.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions
from grafana_foundation_sdk.builders.dashboard import (
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BarGaugeDisplayMode,
    BigValueGraphMode,
    VizOrientation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from finetune_operator.generated import write_or_check

OUTPUT_PATH = Path("charts/finetune-operator/dashboards/finetune-operator.json")
UID = "finetune-operator"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
# Selectors of the template variables; "All" is `.*`, so jobs created later show at once.
JOBS = 'namespace=~"$namespace", job=~"$job"'
NAMESPACES = 'namespace=~"$namespace"'


# A row header or a panel, in the order they appear.
Part = Row | stat.Panel | bargauge.Panel | timeseries.Panel
# Single-value panels show each series' newest value.
LATEST = ReduceDataOptions().calcs(["lastNotNull"])
ALL = VariableOption(selected=True, text="All", value="$__all")


def query(expr: str, legend: str, ref: str = "A") -> Dataquery:
    return Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


def variables() -> list[DatasourceVariable | QueryVariable]:
    """A Prometheus data source, then namespaces and jobs from our own metrics' labels."""
    datasource = DatasourceVariable("datasource").label("Data source").type("prometheus")
    namespace = (
        QueryVariable("namespace")
        .label("Namespace")
        .datasource(DATASOURCE)
        .query("label_values(finetune_jobs, namespace)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(ALL)
    )
    job = (
        QueryVariable("job")
        .label("Job")
        .datasource(DATASOURCE)
        .query(f"label_values(finetune_job_attempts{{{NAMESPACES}}}, job)")
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(ALL)
    )
    return [datasource, namespace, job]


def jobs_row() -> list[Part]:
    by_phase = (
        stat.Panel()
        .title("Jobs by phase")
        .description("FineTuneJobs in each phase, in the selected namespaces.")
        .with_target(query(f"sum by (phase) (finetune_jobs{{{NAMESPACES}}})", "{{phase}}"))
        .graph_mode(BigValueGraphMode.NONE)
        .reduce_options(LATEST)
        .unit("short")
        .span(6)
        .height(6)
    )
    finished = (
        stat.Panel()
        .title("Jobs finished")
        .description(
            "Jobs that succeeded or failed in the dashboard's time range (all namespaces)."
        )
        .with_target(
            query(
                "sum by (outcome) (increase(finetune_job_duration_seconds_count[$__range]))",
                "{{outcome}}",
            ).instant()
        )
        .graph_mode(BigValueGraphMode.NONE)
        .reduce_options(LATEST)
        .unit("short")
        .decimals(0)
        .span(6)
        .height(6)
    )
    progress = (
        bargauge.Panel()
        .title("Progress")
        .description("Optimizer steps done over steps planned, per job.")
        .with_target(query(f"finetune_job_progress_ratio{{{JOBS}}}", "{{namespace}}/{{job}}"))
        .display_mode(BarGaugeDisplayMode.GRADIENT)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(LATEST)
        .unit("percentunit")
        .min(0)
        .max(1)
        .span(6)
        .height(6)
    )
    eta = (
        bargauge.Panel()
        .title("Time left (ETA)")
        .description("The trainer's estimate of the time until training ends, per job.")
        .with_target(query(f"finetune_job_eta_seconds{{{JOBS}}}", "{{namespace}}/{{job}}"))
        .display_mode(BarGaugeDisplayMode.BASIC)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(LATEST)
        .unit("s")
        .min(0)
        .span(6)
        .height(6)
    )
    return [Row("Jobs"), by_phase, finished, progress, eta]


def training_row() -> list[Part]:
    loss = (
        timeseries.Panel()
        .title("Train vs eval loss")
        .description("Latest training loss and validation loss, per job.")
        .with_target(
            query(f"finetune_job_train_loss{{{JOBS}}}", "{{namespace}}/{{job}} train", "A")
        )
        .with_target(query(f"finetune_job_eval_loss{{{JOBS}}}", "{{namespace}}/{{job}} eval", "B"))
        .unit("short")
        .span(12)
        .height(8)
    )
    throughput = (
        timeseries.Panel()
        .title("Tokens per second")
        .description("Non-padding tokens trained on per second, per job.")
        .with_target(query(f"finetune_job_tokens_per_second{{{JOBS}}}", "{{namespace}}/{{job}}"))
        .unit("short")
        .min(0)
        .span(12)
        .height(8)
    )
    attempts = (
        timeseries.Panel()
        .title("Attempts and retries")
        .description("Ray cluster attempts per job; each attempt after the first is a retry.")
        .with_target(query(f"finetune_job_attempts{{{JOBS}}}", "{{namespace}}/{{job}}", "A"))
        .with_target(
            query(f"sum(clamp_min(finetune_job_attempts{{{JOBS}}} - 1, 0))", "retries", "B")
        )
        .unit("short")
        .min(0)
        .decimals(0)
        .span(12)
        .height(8)
    )
    duration = (
        bargauge.Panel()
        .title("Job duration (creation to finish)")
        .description(
            "Median and 90th percentile duration of the jobs that finished in the dashboard's "
            "time range, by outcome (all namespaces)."
        )
        .with_target(quantile_over_range(0.5, "median", "A"))
        .with_target(quantile_over_range(0.9, "p90", "B"))
        .display_mode(BarGaugeDisplayMode.BASIC)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(LATEST)
        .unit("s")
        .min(0)
        .span(12)
        .height(8)
    )
    return [Row("Training"), loss, throughput, attempts, duration]


def sweep_row() -> list[Part]:
    trials = (
        bargauge.Panel()
        .title("Sweep trials")
        .description(
            "Trials of each sweep by state: done, running, stopped early by the scheduler "
            "(ASHA), failed, pending."
        )
        .with_target(
            query(f"finetune_job_sweep_trials{{{JOBS}}}", "{{namespace}}/{{job}} {{state}}")
        )
        .display_mode(BarGaugeDisplayMode.BASIC)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(LATEST)
        .unit("short")
        .decimals(0)
        .min(0)
        .span(12)
        .height(8)
    )
    best = (
        timeseries.Panel()
        .title("Best trial so far")
        .description(
            "Each sweep's best finished trial by its ranking metric (spec.sweep.metric, "
            "eval_loss unless set)."
        )
        .with_target(query(f"finetune_job_sweep_best_metric{{{JOBS}}}", "{{namespace}}/{{job}}"))
        .unit("short")
        .span(12)
        .height(8)
    )
    return [Row("Sweeps"), trials, best]


def quantile_over_range(quantile: float, name: str, ref: str) -> Dataquery:
    expr = (
        f"histogram_quantile({quantile}, sum by (le, outcome) "
        "(rate(finetune_job_duration_seconds_bucket[$__range])))"
    )
    return query(expr, f"{name} {{{{outcome}}}}", ref).instant()


def operator_row() -> list[Part]:
    latency = (
        timeseries.Panel()
        .title("Reconcile latency")
        .description("How long one reconcile pass of one job takes.")
        .with_target(
            query(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(finetune_reconcile_duration_seconds_bucket[$__rate_interval])))",
                "p50",
                "A",
            )
        )
        .with_target(
            query(
                "histogram_quantile(0.99, sum by (le) "
                "(rate(finetune_reconcile_duration_seconds_bucket[$__rate_interval])))",
                "p99",
                "B",
            )
        )
        .unit("s")
        .span(12)
        .height(8)
    )
    passes = (
        timeseries.Panel()
        .title("Reconcile passes and errors")
        .description("Passes per second, and passes that failed on an API or network error.")
        .with_target(
            query(
                "sum(rate(finetune_reconcile_duration_seconds_count[$__rate_interval]))",
                "passes",
                "A",
            )
        )
        .with_target(
            query("sum(rate(finetune_reconcile_errors_total[$__rate_interval]))", "errors", "B")
        )
        .unit("ops")
        .min(0)
        .span(12)
        .height(8)
    )
    return [Row("Operator"), latency, passes]


def build() -> Dashboard:
    dashboard = (
        Dashboard("Fine-tune jobs")
        .uid(UID)
        .description("FineTuneJobs and the finetune-operator, from the operator's /metrics.")
        .tags(["finetune-operator", "generated"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .variables(variables())  # type: ignore[arg-type]
    )
    # Explicit ids: Grafana links and keeps per-panel state by them, so a new row goes last.
    for panel_id, part in enumerate(
        (*jobs_row(), *training_row(), *operator_row(), *sweep_row()), start=1
    ):
        if isinstance(part, Row):
            dashboard = dashboard.with_row(part.id(panel_id))
        else:
            dashboard = dashboard.with_panel(part.id(panel_id))
    return dashboard


def render() -> str:
    """The dashboard as the file holds it: stable key order, one trailing newline."""
    model = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune_operator.dashboard [--check]`: write the dashboard, or check it."""
    args = list(sys.argv[1:] if argv is None else argv)
    text = render()
    return write_or_check(text, [OUTPUT_PATH], check="--check" in args)


if __name__ == "__main__":
    raise SystemExit(main())
