"""The run's report files beside the weights: metrics.json and loss.png; data_report.json's name."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS = "metrics.json"
LOSS_PLOT = "loss.png"
DATA_REPORT = "data_report.json"
MFU_FORMULA = (
    "(6 * N_trained + 4 * N_frozen) * tokens_per_second / (peak_flops_per_device * devices)"
)


def model_flops_per_token(trainable: int, total: int) -> int:
    """Training FLOPs per token for the weights (attention scores left out, as is usual).

    Forward is 2 FLOPs per weight; backward another 2 for the activations' gradient and 2
    for the weight's own. Frozen weights (LoRA's base) skip the last: 4N, trained ones 6N.
    Recomputation under gradient checkpointing is not counted: MFU counts the model's
    work, not the hardware's."""
    return 6 * trainable + 4 * (total - trainable)


def mfu(tokens_per_second: float, *, trainable: int, total: int, peak_flops: float) -> float:
    """Model FLOPs utilisation of all devices, whose summed peak is `peak_flops`."""
    return model_flops_per_token(trainable, total) * tokens_per_second / peak_flops


# Peak dense bf16 tensor FLOP/s per device, for the MFU estimate (unknown devices get none).
PEAK_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
}


def device_row(
    tokens_per_second: float, trainable: int, total: int, world: int
) -> dict[str, float]:
    """On GPUs, a step's peak memory and MFU (LoRA-aware, see mfu) over the peak dense bf16
    FLOP/s of every device in the run; nothing on CPU."""
    import torch

    if not torch.cuda.is_available():
        return {}
    row = {"peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    name = torch.cuda.get_device_name()
    peak = next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
    if peak:
        row["mfu"] = mfu(tokens_per_second, trainable=trainable, total=total,
                         peak_flops=peak * world)  # fmt: skip
    return row


def write_metrics(path: Path, metrics: dict[str, Any]) -> None:
    finite = {
        k: v for k, v in metrics.items() if not (isinstance(v, float) and not math.isfinite(v))
    }
    path.write_text(json.dumps(finite, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def throughput(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean tokens/s over the run, the base model's validation loss, and MFU when measured."""
    speeds = [r["tokens_per_second"] for r in history if "tokens_per_second" in r]
    result: dict[str, Any] = {"tokens_per_second": sum(speeds) / len(speeds)} if speeds else {}
    baseline = [r["eval_loss"] for r in history if r["step"] == 0 and "eval_loss" in r]
    if baseline:
        result["baseline_eval_loss"] = baseline[0]
    mfu = [r["mfu"] for r in history if "mfu" in r]
    if mfu:
        result |= {
            "mfu": sum(mfu) / len(mfu),
            "mfu_formula": MFU_FORMULA,
            "peak_memory_gib": max(r["peak_memory_gib"] for r in history),
        }
    return result


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
