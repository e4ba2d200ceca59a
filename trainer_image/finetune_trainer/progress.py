"""What the person at the terminal sees: a progress bar while training, a table at the end.

Without a terminal (a RayJob's logs) the bar becomes one plain line every few steps.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

PLAIN_EVERY_SECONDS = 10.0


class ProgressView:
    """Feeds history rows into a rich progress bar (or plain log lines)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stdout)
        self.interactive = self.console.is_terminal
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_plain = 0.0

    def start(self, start_step: int, total_steps: int) -> None:
        if start_step:
            self.console.print(f"resuming from the checkpoint at step {start_step}")
        if not self.interactive:
            return
        self.bar = Progress(
            TextColumn("[bold]training"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  {task.fields[speed]} tok/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.bar.start()
        self.task = self.bar.add_task(
            "train", total=total_steps, completed=start_step, loss="-", speed="-"
        )

    def update(self, row: dict[str, Any], total_steps: int) -> None:
        if "eval_loss" in row:
            rewards = (
                f", reward accuracy {row['eval_reward_accuracy']:.2f}, margin "
                f"{row['eval_reward_margin']:.3f}"
                if "eval_reward_accuracy" in row  # dpo
                else ""
            )
            self.console.print(
                f"step {row['step']}: validation loss {row['eval_loss']:.4f}{rewards}"
            )
        if "loss" not in row:  # the baseline evaluation before the first step
            return
        loss, speed = f"{row['loss']:.4f}", f"{row['tokens_per_second']:,.0f}"
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=row["step"], loss=loss, speed=speed)
        elif (
            time.monotonic() - self.last_plain >= PLAIN_EVERY_SECONDS or row["step"] == total_steps
        ):
            self.last_plain = time.monotonic()
            print(f"step {row['step']}/{total_steps} loss {loss} tokens/s {speed}", flush=True)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def summary_table(metrics: dict[str, Any], output: str) -> Table:
    table = Table(title=f"fine-tune finished: {output}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table
