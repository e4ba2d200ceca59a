"""The run's report files: history.jsonl, metrics.json, loss.png and the README.md model card;
and the trip to s3:// when the destination is remote."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from finetune_operator import api

HISTORY = "history.jsonl"
METRICS = "metrics.json"
LOSS_PLOT = "loss.png"
MODEL_CARD = "README.md"
DATA_REPORT = "data_report.json"
MFU_FORMULA = "6 * N * tokens_per_second / (peak_flops_per_device * devices), N = all parameters"


def read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def truncate_history(path: Path, after_step: int) -> None:
    """Drop rows past the checkpoint a run resumes from: those steps are trained again."""
    kept = [row for row in read_history(path) if row["step"] <= after_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")


def append_history(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    finite = {
        k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))
    }
    path.write_text(json.dumps(finite, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def plot_loss(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss per step, validation loss where evaluated."""
    import matplotlib

    matplotlib.use("Agg")  # no display in pods or CI
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    trained = [r for r in history if "loss" in r]
    axes.plot([r["step"] for r in trained], [r["loss"] for r in trained], label="train loss")
    evaluated = [r for r in history if "eval_loss" in r]
    if evaluated:
        axes.plot(
            [r["step"] for r in evaluated],
            [r["eval_loss"] for r in evaluated],
            "o-",
            label="validation loss",
        )
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats per token)")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def model_card(job: api.FineTuneJob, metrics: dict[str, Any], data_report: dict[str, Any]) -> str:
    """The README.md written beside the weights: what was trained, on what, how, how well."""
    spec = job.spec
    hp = spec.hyperparameters
    lines = [
        f"# {job.metadata.name}",
        "",
        f"Fine-tuned from `{spec.model.source}` (revision `{spec.model.revision}`) with "
        f"{spec.method.type} by finetune-operator.",
        "",
        "## Data",
        "",
        f"- train: `{spec.dataset.train.source}` ({spec.dataset.train.format})",
    ]
    for name in ("validation", "test"):
        source = getattr(spec.dataset, name)
        lines.append(f"- {name}: " + (f"`{source.source}`" if source else "held out from train"))
    lines += [f"- mix: `{m.source}` (weight {m.weight})" for m in spec.dataset.mix]
    lines += ["", "| records | count |", "|---|---|"]
    for key in (
        "records_read",
        "train",
        "validation",
        "test",
        "duplicates_removed",
        "leakage_removed",
        "tokens",
        "padding_ratio",
    ):
        if key in data_report:
            lines.append(f"| {key} | {_plain(data_report[key])} |")
    lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
    settings = {
        "method": spec.method.type,
        "epochs": hp.epochs,
        "max steps": hp.max_steps,
        "learning rate": hp.learning_rate,
        "scheduler": f"{hp.lr_scheduler}, warmup {hp.warmup_ratio}",
        "batch size (global)": hp.batch_size,
        "max sequence length": spec.dataset.max_seq_length,
        "packing": spec.dataset.packing,
        "precision": hp.precision,
        "DeepSpeed ZeRO stage": spec.deepspeed.zero_stage,
        "seed": hp.seed,
    }
    if spec.method.type != "full":
        lora = spec.method.lora
        settings["LoRA"] = (
            f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout}, "
            f"targets={', '.join(lora.target_modules)}"
        )
    lines += [f"| {k} | {v} |" for k, v in settings.items() if v is not None]
    lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
    lines += [
        f"| {k} | {_plain(v)} |" for k, v in sorted(metrics.items()) if not isinstance(v, dict)
    ]
    lines += ["", "## Use", ""]
    if spec.method.type == "full" or spec.output.merge_adapter:
        lines.append("`AutoModelForCausalLM.from_pretrained('model')` loads the fine-tuned model.")
    if spec.method.type != "full":
        lines.append(
            "`PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), 'adapter')` "
            "loads the adapter on its base model."
        )
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def s3_endpoint() -> str | None:
    """On-prem S3-compatible stores (MinIO, Ceph) are reached through an explicit endpoint."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")


def s3_options(uri: str) -> dict[str, Any]:
    endpoint = s3_endpoint()
    if uri.startswith("s3://") and endpoint:
        return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def upload_dir(local: Path, uri: str) -> None:
    """Copy everything under `local` to an s3:// prefix (checkpoints go there through Ray)."""
    import fsspec

    from finetune_trainer.storage import s3_errors

    filesystem, root = fsspec.core.url_to_fs(uri, **s3_options(uri))
    with s3_errors(uri):
        for path in sorted(local.rglob("*")):
            if path.is_file():
                filesystem.put_file(
                    str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}"
                )
