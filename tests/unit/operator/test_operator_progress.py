"""The pure parts of following a job's progress: the /progress body, the strings kubectl shows,
the write throttle, the read backoff, the condition and the milestone Events."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.api import FineTuneJobStatus
from finetune_operator.progress_poll import progress_url, retry_delay
from finetune_operator.progress_status import (
    MalformedProgress,
    availability_events,
    display,
    eta_text,
    is_news,
    milestone_events,
    parse_body,
    with_availability,
    with_snapshot,
    write_due,
)

NOW = "2026-01-01T00:00:00Z"


def body(step: int = 10, *, result: dict[str, Any] | None = None, **progress: Any) -> bytes:
    fields = {"step": step, "totalSteps": 40, "trainLoss": 2.5, "etaSeconds": 90.0, **progress}
    checkpoint = {"step": 10, "uri": "s3://b/ckpt/10"} if step >= 10 else None
    return json.dumps({"progress": fields, "lastCheckpoint": checkpoint, "result": result}).encode()


def status_after(*bodies: bytes) -> FineTuneJobStatus:
    status = FineTuneJobStatus()
    for raw in bodies:
        status = with_snapshot(status, parse_body(raw), NOW)
    return status


@pytest.mark.parametrize(
    ("step", "total", "shown"),
    [
        (1200, 4000, "1200/4000 (30%)"),
        (0, 40, "0/40 (0%)"),
        (3999, 4000, "3999/4000 (99%)"),  # rounded down: 100% only when done
        (40, 40, "40/40 (100%)"),
        (7, None, "7"),
        (None, 40, None),
    ],
)
def test_display(step, total, shown) -> None:
    assert display(step, total) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (7500, "2h05m"),
        (45.4, "45s"),
        (0, "0s"),
        (750, "12m30s"),
        (3600, "1h00m"),
        (3 * 86400 + 4 * 3600 + 59, "3d04h"),
        (None, None),
        (-1, None),
        (float("inf"), None),
    ],
)
def test_eta_text(seconds, shown) -> None:
    assert eta_text(seconds) == shown


@pytest.mark.parametrize(
    ("raw", "complaint"),
    [
        (b"<html>502</html>", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"[" * 100_000, "not JSON"),
        (b'{"progress": [1]}', "progress: expected an object, got list"),
        (b'{"progress": {"step": "many"}}', "progress.step"),
        (b'{"progress": {"trainLoss": NaN}}', "progress.trainLoss"),
        (b'{"progress": {}, "lastCheckpoint": {"step": 3}}', "lastCheckpoint.uri"),
        (b'{"progress": {}, "result": {"metrics": {"loss": "low"}}}', "result.metrics.loss"),
    ],
)
def test_malformed_bodies_are_refused_with_where_they_go_wrong(raw, complaint) -> None:
    with pytest.raises(MalformedProgress, match=complaint.replace(".", r"\.")):
        parse_body(raw)


def test_a_body_is_read_through_the_api_models_and_newer_keys_are_ignored() -> None:
    raw = json.dumps(
        {
            "progress": {"step": 5, "totalSteps": 10, "display": "lies", "gpuTemp": 80},
            "lastCheckpoint": None,
            "result": None,
            "newerPart": {},
        }
    ).encode()
    snapshot = parse_body(raw)
    assert snapshot.progress.step == 5 and snapshot.progress.total_steps == 10
    assert snapshot.progress.display is None  # the operator derives it, never the trainer
    shown = with_snapshot(FineTuneJobStatus(), snapshot, NOW).progress
    assert shown is not None and (shown.display, shown.eta, shown.updated_at) == (
        "5/10 (50%)",
        None,
        NOW,
    )


@pytest.mark.parametrize(
    ("stored", "read", "last_write", "now", "due"),
    [
        (None, body(10), None, 100.0, True),  # first news: written at once
        (body(10), body(11), 100.0, 110.0, False),  # news inside the window: held back
        (body(10), body(11), 100.0, 115.0, True),  # the window has passed
        (body(10), body(10), 0.0, 500.0, False),  # nothing new: never written
        (body(40), body(40, result={"metrics": {"eval_loss": 1.0}}), 100.0, 101.0, True),
    ],
    ids=["first", "throttled", "window-passed", "no-news", "result-not-held"],
)
def test_write_throttle(stored, read, last_write, now, due) -> None:
    status = status_after(stored) if stored else FineTuneJobStatus()
    decided = write_due(status, parse_body(read), last_write=last_write, now=now, window=15.0)
    assert decided is due


def test_the_read_time_alone_is_no_news() -> None:
    status = with_snapshot(FineTuneJobStatus(), parse_body(body(10)), "2026-01-01T00:00:00Z")
    assert not is_news(status, parse_body(body(10)))


def test_a_written_result_is_kept_when_a_later_read_has_none() -> None:
    result = {"outputUri": "s3://o", "metrics": {"eval_loss": 1.0}}
    status = status_after(body(40, result=result), body(3))
    assert status.result is not None and status.result.output_uri == "s3://o"


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 5.0), (1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (5, 60.0), (30, 60.0)],
)
def test_reads_back_off_exponentially_up_to_a_cap(failures, delay) -> None:
    assert retry_delay(failures, interval=5.0, cap=60.0) == delay


@pytest.mark.parametrize(
    ("dashboard", "url"),
    [
        ("llama-raycluster-x-head-svc.team-a.svc.cluster.local:8265",
         "http://llama-raycluster-x-head-svc.team-a.svc.cluster.local:8266/progress"),
        ("http://10.0.0.7:8265", "http://10.0.0.7:8266/progress"),
        ("[fd00::7]:8265", "http://[fd00::7]:8266/progress"),
        ("", None),
        (None, None),
    ],
)  # fmt: skip
def test_progress_url_is_the_dashboards_host_on_the_progress_port(dashboard, url) -> None:
    assert progress_url({"dashboardURL": dashboard}, 8266) == url


def test_availability_condition_and_its_events() -> None:
    fine = with_availability(FineTuneJobStatus(), None, now=NOW)
    assert [(c.type, c.status) for c in fine.conditions] == [("ProgressAvailable", "True")]
    assert availability_events(FineTuneJobStatus(), fine) == []  # the first read: no noise
    broken = with_availability(fine, "ProgressUnreachable: GET http://h/progress: refused", now=NOW)
    (shown,) = broken.conditions
    assert (shown.status, shown.reason, shown.message) == (
        "False",
        "ProgressUnreachable",
        "GET http://h/progress: refused",
    )
    (warning,) = availability_events(fine, broken)
    assert (warning.type_, warning.reason) == ("Warning", "ProgressUnreachable")
    assert availability_events(broken, broken) == []  # said once, not on every pass
    (recovered,) = availability_events(broken, with_availability(broken, None, now=NOW))
    assert (recovered.type_, recovered.reason) == ("Normal", "ProgressAvailable")


@pytest.mark.parametrize(
    ("before", "after", "reasons"),
    [
        ((), (body(0),), []),
        ((body(0),), (body(1),), ["TrainingStarted"]),
        ((body(5),), (body(10),), ["CheckpointSaved"]),
        ((body(10),), (body(11),), []),
        ((body(10, evalLoss=2.0, bestEvalLoss=2.0),), (body(11, evalLoss=2.3, bestEvalLoss=2.0),),
         ["EvalLossRegressed"]),
        ((body(11, evalLoss=2.3, bestEvalLoss=2.0),), (body(12, evalLoss=2.3, bestEvalLoss=2.0),),
         []),  # the same evaluation, read again
        ((body(10, evalLoss=2.0, bestEvalLoss=2.0),), (body(11, evalLoss=1.9, bestEvalLoss=1.9),),
         []),
        ((body(11),), (body(11, earlyStopped=True),), ["EarlyStopped"]),
        ((body(11),), (body(11, result={"metrics": {"train_loss": 1.0}}),), ["TrainingFinished"]),
    ],
    ids=["baseline", "first-step", "checkpoint", "plain-step", "regression", "same-eval",
         "improvement", "early-stop", "finished"],
)  # fmt: skip
def test_milestone_events(before, after, reasons) -> None:
    events = milestone_events(status_after(*before), status_after(*before, *after),
                              checkpoint_event_due=True)  # fmt: skip
    assert [event.reason for event in events] == reasons


def test_checkpoint_events_are_throttled_and_finished_names_headline_metrics() -> None:
    before, after = status_after(body(5)), status_after(body(10))
    assert milestone_events(before, after, checkpoint_event_due=False) == []
    metrics = {"train_loss": 1.0, "eval_loss": 1.25, "steps": 40.0, "test_accuracy": 0.5}
    finished = status_after(body(40, result={"outputUri": "s3://o/run", "metrics": metrics}))
    (event,) = milestone_events(after, finished, checkpoint_event_due=False)
    assert event.message == (
        "training finished: train_loss 1.0000, eval_loss 1.2500, test_accuracy 0.5000; "
        "outputs in s3://o/run"
    )
