"""The driver's /progress endpoint, as the operator would poll it."""

from __future__ import annotations

import json
import math
import socket
import urllib.error
import urllib.request

import pytest
from finetune_operator import api
from finetune_trainer.progress_server import ProgressBoard, final_result, serve

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
