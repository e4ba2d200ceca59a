"""The driver's /progress endpoint, as the operator would poll it."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from finetune_operator import api
from finetune_trainer.progress_server import (
    LINGER_ENV,
    PORT_ENV,
    ProgressBoard,
    final_result,
    serve,
    serving,
)

CHECKPOINT_URI = "s3://bucket/run/checkpoints/chat-5f0c1e2a/checkpoint_step_00000010"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_progress(board: ProgressBoard) -> dict:
    """GET /progress from `board` served on a free loopback port; a 404 for any other path."""
    port = free_port()
    server = serve(board, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=5) as reply:
            body = json.load(reply)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.shutdown()
    return body


def test_progress_is_served_in_the_status_field_names():
    board = ProgressBoard()
    board.update({"step": 0, "epoch": 0.0, "eval_loss": 6.3}, 40)
    board.update({"step": 10, "epoch": 0.5, "loss": 3.2, "tokens_per_second": 900.0,
                  "eval_loss": 3.1}, 40)  # fmt: skip
    board.checkpointed(api.CheckpointRef(step=10, uri=CHECKPOINT_URI))
    body = get_progress(board)
    assert set(body) == {"progress", "lastCheckpoint", "result"}
    progress = body["progress"]
    assert progress["step"] == 10 and progress["totalSteps"] == 40
    assert progress["percent"] == 25.0 and progress["epoch"] == 0.5
    assert progress["trainLoss"] == 3.2 and progress["evalLoss"] == 3.1
    assert progress["tokensPerSecond"] == 900.0
    assert progress["etaSeconds"] is not None and progress["etaSeconds"] >= 0
    assert body["lastCheckpoint"] == {"step": 10, "uri": CHECKPOINT_URI}
    assert body["result"] is None
    # The operator reads each part back with the API's own models.
    assert api.Progress.model_validate(progress).total_steps == 40
    assert api.CheckpointRef.model_validate(body["lastCheckpoint"]).step == 10


def test_the_result_appears_when_training_ends():
    board = ProgressBoard()
    board.update({"step": 4, "epoch": 1.0, "loss": 1.5, "tokens_per_second": 10.0}, 4)
    metrics = {"train_loss": 1.5, "eval_loss": math.nan, "steps": 4, "stopped_early": False,
               "mfu_formula": "6 * N * tokens", "tokenized_by_split": {"train": {}}}  # fmt: skip
    board.finished(final_result("s3://bucket/run", metrics))
    body = get_progress(board)
    assert body["result"] == {"outputUri": "s3://bucket/run",
                              "metrics": {"train_loss": 1.5, "steps": 4.0}}  # fmt: skip
    assert api.Result.model_validate(body["result"]).metrics["steps"] == 4.0
    assert body["lastCheckpoint"] is None


def test_an_empty_board_serves_empty_progress_and_no_checkpoint_or_result():
    assert ProgressBoard().snapshot() == {"progress": {}, "lastCheckpoint": None, "result": None}


def test_the_board_keeps_the_best_validation_loss_and_the_early_stop():
    board = ProgressBoard()
    rows = [
        {"step": 0, "epoch": 0.0, "eval_loss": 6.3},
        {"step": 10, "epoch": 0.5, "loss": 3.2, "tokens_per_second": 9.0, "eval_loss": 2.0},
        {"step": 20, "epoch": 1.0, "loss": 3.0, "tokens_per_second": 9.0, "eval_loss": 2.4},
        {"step": 30, "epoch": 1.5, "loss": 2.9, "tokens_per_second": 9.0, "eval_loss": 2.6,
         "stopped_early": True},
    ]  # fmt: skip
    seen = []
    for row in rows:
        board.update(row, 40)
        progress = board.snapshot()["progress"]
        seen.append((progress["evalLoss"], progress["bestEvalLoss"], progress.get("earlyStopped")))
    assert seen == [(6.3, 6.3, None), (2.0, 2.0, None), (2.4, 2.0, None), (2.6, 2.0, True)]


def serve_with_result(monkeypatch, linger: str) -> tuple[str, threading.Thread, list[float]]:
    """`serving` on a free port around a run that publishes its result; the thread it runs
    in, and when (monotonic) the block was left and the serving ended."""
    port = free_port()
    monkeypatch.setenv(PORT_ENV, str(port))
    monkeypatch.setenv(LINGER_ENV, linger)
    times: list[float] = []

    def run() -> None:
        board = ProgressBoard()
        with serving(board):
            board.finished(final_result("s3://bucket/run", {"train_loss": 1.0}))
            times.append(time.monotonic())
        times.append(time.monotonic())

    thread = threading.Thread(target=run)
    thread.start()
    return f"http://127.0.0.1:{port}/progress", thread, times


def test_the_driver_serves_until_the_result_has_been_read(monkeypatch):
    url, thread, times = serve_with_result(monkeypatch, "30")
    time.sleep(0.5)
    assert thread.is_alive(), "the driver left before anyone read the result"
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert json.load(reply)["result"]["outputUri"] == "s3://bucket/run"
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert times[1] - times[0] < 10  # left when read, long before the linger ran out
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_the_driver_leaves_after_the_linger_when_nobody_reads(monkeypatch):
    _, thread, times = serve_with_result(monkeypatch, "0.3")
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert 0.3 <= times[1] - times[0] < 5
