"""Feeding the device: batches collated one step ahead, rows sent from a reporter thread."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.prefetch import ahead, collate_step
from finetune_trainer.reporter import BackgroundReporter, PendingRow


def test_ahead_loads_the_next_item_on_another_thread_while_the_caller_works():
    loading = {item: threading.Event() for item in range(4)}
    threads: set[str] = set()

    def load(item: int) -> int:
        threads.add(threading.current_thread().name)
        loading[item].set()
        return item * 10

    results = []
    for result in ahead(range(4), load):
        item = result // 10
        # While the caller holds item k, item k+1 is loaded without being asked for.
        if item + 1 in loading:
            assert loading[item + 1].wait(timeout=10)
        results.append(result)
    assert results == [0, 10, 20, 30]  # same items, same order
    assert threading.current_thread().name not in threads


def test_ahead_raises_a_load_error_where_its_result_is_taken():
    def load(item: int) -> int:
        if item == 2:
            raise ValueError("bad row")
        return item

    results = ahead(range(5), load)
    assert [next(results), next(results)] == [0, 1]
    with pytest.raises(ValueError, match="bad row"):
        next(results)


def test_a_collated_step_counts_its_tokens_on_the_host():
    rows = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7, 8],
         "position_ids": [0, 1, 2, 3]},
        {"input_ids": [5, 6], "labels": [IGNORE_INDEX, 6], "position_ids": [0, 1]},
    ]  # fmt: skip
    host = collate_step([rows[:1], rows[1:]], pad_token_id=0, dtype=torch.float32, pin=False)
    assert (host.tokens, host.loss_tokens) == (6, 3)
    assert [b["input_ids"].shape for b in host.batches] == [(1, 4), (1, 2)]
    on_device = host.to(torch.device("cpu"))
    assert torch.equal(on_device[0]["input_ids"], torch.tensor([[5, 6, 7, 8]]))


class Tracker:
    """Stands in for the Ray actor: keeps rows and says stop from a given step on."""

    def __init__(self, stop_from: int | None = None, delay: float = 0.0) -> None:
        self.rows: list[dict] = []
        self.stop_from, self.delay = stop_from, delay

    def record(self, row: dict) -> bool:
        time.sleep(self.delay)
        self.rows.append(row)
        return self.stop_from is not None and row["step"] >= self.stop_from


def test_rows_are_read_finished_and_sent_in_order_without_waiting_for_the_tracker():
    tracker = Tracker(delay=0.2)
    reporter = BackgroundReporter(tracker.record, finish=lambda v: v | {"finished": True})
    started = time.perf_counter()
    for step in (1, 2, 3):
        counts = {"tokens": torch.tensor(100.0), "loss_tokens": torch.tensor(40.0)}
        row = PendingRow({"step": step, "loss": torch.tensor(2.5)}, started=started,
                         counts=counts, ready_at=started + step)  # fmt: skip
        reporter.submit(row)
    assert time.perf_counter() - started < 0.2  # the training thread did not wait
    reporter.submit(PendingRow({"step": 3, "eval_loss": 1.5}, started=started))
    reporter.flush()
    assert [r["step"] for r in tracker.rows] == [1, 2, 3, 3]
    first, second = tracker.rows[:2]
    assert first["loss"] == 2.5 and isinstance(first["loss"], float) and first["finished"]
    # Step 1 took 1 s from its start; step 2 ran from step 1's end to 1 s later.
    assert first["tokens_per_second"] == pytest.approx(100.0)
    assert second["loss_tokens_per_second"] == pytest.approx(40.0)
    assert tracker.rows[3] == {"step": 3, "eval_loss": 1.5}  # no rates for an evaluation
    reporter.close()


def test_the_drivers_stop_answer_reaches_the_training_thread():
    tracker = Tracker(stop_from=2)
    reporter = BackgroundReporter(tracker.record, finish=lambda v: v)
    reporter.submit(PendingRow({"step": 1}, started=0.0))
    reporter.flush()
    assert not reporter.stop_requested.is_set()
    reporter.submit(PendingRow({"step": 2}, started=0.0))
    reporter.flush()
    assert reporter.stop_requested.is_set()
    reporter.close()


def test_a_failed_send_is_raised_in_the_training_thread():
    def broken(row: dict) -> bool:
        raise ConnectionError("actor died")

    reporter = BackgroundReporter(broken, finish=lambda v: v)
    reporter.submit(PendingRow({"step": 1}, started=0.0))
    with pytest.raises(RuntimeError, match="reporting a step") as raised:
        reporter.flush()
    assert isinstance(raised.value.__cause__, ConnectionError)
