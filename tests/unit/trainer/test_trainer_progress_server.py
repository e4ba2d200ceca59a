"""The driver's /progress endpoint, as the operator would poll it."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from finetune_trainer.progress_server import ProgressBoard, serve


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_progress_is_served_in_the_status_field_names():
    board = ProgressBoard()
    board.update({"step": 0, "epoch": 0.0, "eval_loss": 6.3}, 40, None)
    board.update({"step": 10, "epoch": 0.5, "loss": 3.2, "tokens_per_second": 900.0,
                  "eval_loss": 3.1}, 40, 10)  # fmt: skip
    port = free_port()
    server = serve(board, port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/progress", timeout=5) as reply:
            progress = json.load(reply)
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        server.shutdown()
    assert progress["step"] == 10 and progress["totalSteps"] == 40
    assert progress["percent"] == 25.0 and progress["epoch"] == 0.5
    assert progress["trainLoss"] == 3.2 and progress["evalLoss"] == 3.1
    assert progress["tokensPerSecond"] == 900.0 and progress["lastCheckpointStep"] == 10
    assert progress["etaSeconds"] is not None and progress["etaSeconds"] >= 0


def test_an_empty_board_serves_an_empty_object():
    assert ProgressBoard().snapshot() == {}
