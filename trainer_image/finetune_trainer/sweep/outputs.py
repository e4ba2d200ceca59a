"""A finished sweep's files: sweep.json (one row per trial), sweep.png (the metric per
trial over the steps) and the best trial's weights and history at the output's top level,
where the rest of the job's outputs (metrics.json, loss.png, serving/, README.md) expect
them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from finetune_operator import api

from finetune_trainer.history import HISTORY, read_history
from finetune_trainer.sweep.tally import TrialRecord, best_trial, tally
from finetune_trainer.sweep.trial import TRIALS_DIR

SWEEP_TABLE = "sweep.json"
SWEEP_PLOT = "sweep.png"
WEIGHTS = ("adapter", "model")  # what a trial's rank 0 saved, as a plain run does


def write_table(path: Path, records: list[TrialRecord], sweep: api.SweepSpec) -> None:
    """sweep.json: the sweep's settings, the counts, the best trial and every trial."""
    best = best_trial(records, sweep)
    table = {
        "metric": sweep.metric,
        "mode": sweep.mode,
        "scheduler": sweep.scheduler.to_wire(),
        "summary": tally(records, sweep).to_wire(),
        "best": None if best is None else best.id,
        "trials": [
            {
                "id": r.id,
                "state": r.state,
                "hyperparameters": r.hyperparameters,
                sweep.metric: r.metric,
                "step": r.step,
                "history": f"{TRIALS_DIR}/{r.id}/{HISTORY}",
            }
            for r in sorted(records, key=lambda r: r.id)
        ],
    }
    path.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")


def plot_trials(output_dir: Path, records: list[TrialRecord], metric: str, path: Path) -> None:
    """The metric over the steps, one line per trial; stopped trials dashed, the best bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    for record in sorted(records, key=lambda r: r.id):
        rows = read_history(output_dir / TRIALS_DIR / record.id / HISTORY)
        points = [(row["step"], row[metric]) for row in rows if metric in row]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        style = "--" if record.state == "stopped" else "-"
        axes.plot(
            steps, values, style, marker="o", markersize=3, label=f"{record.id} ({record.state})"
        )
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per trial")
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def promote(output_dir: Path, trial_id: str) -> None:
    """Copy the best trial's weights and history to the output's top level."""
    trial = output_dir / TRIALS_DIR / trial_id
    for name in WEIGHTS:
        target = output_dir / name
        if target.exists():
            shutil.rmtree(target)
        if (trial / name).exists():
            shutil.copytree(trial / name, target)
    shutil.copyfile(trial / HISTORY, output_dir / HISTORY)


def final_metrics(output_dir: Path, trial_id: str) -> dict[str, Any]:
    """The metrics the trial wrote when it finished."""
    from finetune_trainer.sweep.trial import TRIAL_METRICS

    loaded: dict[str, Any] = json.loads(
        (output_dir / TRIALS_DIR / trial_id / TRIAL_METRICS).read_text()
    )
    return loaded
