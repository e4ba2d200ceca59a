"""The sweep's pure parts: a trial's values in the spec, the search space in Tune's terms,
the tally status and sweep.json are built from, and the tracker's answer to a trial's rank 0
waiting at an evaluation."""

from __future__ import annotations

import pytest
from finetune_operator import api
from finetune_trainer.sweep.space import apply_trial, tune_space
from finetune_trainer.sweep.tally import TrialRecord, best_trial, state_of, tally
from finetune_trainer.sweep.trial import STOPPED_MARK, TRIAL_METRICS
from finetune_trainer.tracker import ProgressTracker, TrackerState, is_ranked_evaluation

from tests.factories import MakeJob

SWEEP = {
    "searchSpace": {
        "learningRate": {"logUniform": [1e-5, 1e-3]},
        "warmupRatio": {"uniform": [0.0, 0.1]},
        "lora.r": {"choice": [8, 16]},
        "lrScheduler": {"choice": ["cosine", "linear"]},
    },
    "trials": 5,
}


def spec() -> api.FineTuneJobSpec:
    return api.FineTuneJob.model_validate(MakeJob().spec(sweep=SWEEP).obj()).spec


def test_a_trial_s_values_land_in_their_fields_and_nothing_else_moves():
    base = spec()
    trial = apply_trial(base, {"learningRate": 3e-4, "lora.r": 8, "lrScheduler": "linear"})
    assert trial.hyperparameters.learning_rate == 3e-4
    assert trial.hyperparameters.lr_scheduler == "linear"
    assert trial.method.lora.r == 8
    assert trial.method.lora.alpha == base.method.lora.alpha
    assert trial.dataset == base.dataset and trial.output == base.output


def test_a_dpo_trial_s_beta_is_the_one_its_objective_trains_with():
    preference = {"train": {"source": "pairs.jsonl", "format": "preference"},
                  "validationSplit": 0.1}  # fmt: skip
    sweep = {"searchSpace": {"dpo.beta": {"logUniform": [0.01, 0.5]}}, "trials": 2}
    job = MakeJob().spec(method={"objective": "dpo"}, dataset=preference, sweep=sweep).obj()
    base = api.FineTuneJob.model_validate(job).spec
    trial = apply_trial(base, {"dpo.beta": 0.3})
    assert trial.method.dpo.beta == 0.3
    assert trial.method.dpo.loss_type == base.method.dpo.loss_type
    assert trial.method.objective == "dpo" and trial.method.lora == base.method.lora


def test_a_value_outside_its_field_s_range_is_refused():
    with pytest.raises(ValueError, match="lora"):
        apply_trial(spec(), {"lora.r": 0})


def test_the_space_samples_inside_its_bounds():
    space = tune_space(spec().sweep)
    for _ in range(50):
        assert 1e-5 <= space["learningRate"].sample() <= 1e-3
        assert 0.0 <= space["warmupRatio"].sample() <= 0.1
        assert space["lora.r"].sample() in (8, 16)
        assert space["lrScheduler"].sample() in ("cosine", "linear")


def record(trial_id: str, state: str, metric: float | None) -> TrialRecord:
    return TrialRecord(id=trial_id, state=state, hyperparameters={"lora.r": 8},
                       metric=metric, step=4)  # fmt: skip


RECORDS = [
    record("a", "done", 2.5),
    record("b", "stopped", 1.0),  # better so far, but has no final weights
    record("c", "done", 2.0),
    record("d", "running", 3.0),
    record("e", "failed", None),
]


def test_the_tally_counts_each_state_and_picks_the_best_finished_trial():
    sweep = spec().sweep
    progress = tally(RECORDS, sweep)
    assert (progress.done, progress.running, progress.stopped, progress.failed) == (2, 1, 1, 1)
    assert progress.best is not None and progress.best.id == "c" and progress.best.metric == 2.0
    assert progress.display == "3/5 (1 stopped)"
    assert progress.to_wire()["best"]["hyperparameters"] == {"lora.r": 8}


def test_mode_max_picks_the_highest():
    sweep = spec().sweep.model_copy(update={"mode": "max"})
    chosen = best_trial(RECORDS, sweep)
    assert chosen is not None and chosen.id == "a"


def test_a_trial_s_state_comes_from_its_folder_before_tune_s_status(tmp_path):
    assert state_of(tmp_path, "RUNNING") == "running"
    assert state_of(tmp_path, "ERROR") == "failed"
    assert state_of(tmp_path, "PENDING") == "pending"
    (tmp_path / STOPPED_MARK).write_text("stopped at step 2\n")
    assert state_of(tmp_path, "TERMINATED") == "stopped"
    (tmp_path / TRIAL_METRICS).write_text("{}")
    assert state_of(tmp_path, "TERMINATED") == "done"


def test_the_sweep_reaches_the_job_s_status_through_the_progress_contract():
    import json

    from finetune_operator.progress_status import parse_body, with_snapshot
    from finetune_trainer.progress_server import ProgressBoard

    board = ProgressBoard()
    board.swept(tally(RECORDS, spec().sweep))
    snapshot = parse_body(json.dumps(board.snapshot()).encode())
    status = with_snapshot(api.FineTuneJobStatus(), snapshot, "2026-12-07T00:00:00Z")
    wire = status.to_wire()["progress"]["sweep"]
    assert (wire["done"], wire["stopped"], wire["running"]) == (2, 1, 1)
    assert wire["best"] == {"id": "c", "metric": 2.0, "hyperparameters": {"lora.r": 8}}
    assert wire["display"] == "3/5 (1 stopped)"


def test_a_trial_waits_only_at_evaluations_its_scheduler_ranks():
    evaluation = {"loss": 5.0, "eval_loss": 4.0}
    assert is_ranked_evaluation(2, evaluation, "eval_loss", total_steps=8)
    assert not is_ranked_evaluation(2, {"loss": 5.0}, "eval_loss", total_steps=8)  # no evaluation
    assert not is_ranked_evaluation(0, evaluation, "eval_loss", total_steps=8)  # the base model
    assert not is_ranked_evaluation(8, evaluation, "eval_loss", total_steps=8)  # the final report
    assert not is_ranked_evaluation(2, evaluation, None, total_steps=8)  # no scheduler


def test_the_tracker_answers_a_waiting_rank_once_the_scheduler_has():
    progress = ProgressTracker()
    assert progress.answer_for(2) is None  # not answered yet: rank 0 keeps waiting
    progress.answered(2)
    assert progress.answer_for(2) is False
    assert progress.answer_for(4) is None
    progress.request_stop()  # the scheduler stops the trial at its next rung
    progress.answered(4)
    assert progress.answer_for(4) is True


class _Method:
    """An actor method as the follower calls it (`.remote(...)`), noting each call."""

    def __init__(self, calls: list[tuple], name: str, result: object = None) -> None:
        self.calls, self.name, self.result = calls, name, result

    def remote(self, *args: object) -> object:
        self.calls.append((self.name, *args))
        return self.result


def follow(tmp_path, monkeypatch, rows: list[dict]) -> list[tuple]:
    """One poll of a trial's follower whose attempt resumed at step 4 (history holds rows
    1-4) and whose tracker hands it `rows`: the calls to the tracker and to Tune, in order."""
    import json

    import ray
    import ray.tune
    from finetune_trainer.sweep.trial import _TrialFollower

    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"step": s, "loss": 6.0}) + "\n" for s in range(1, 5)))
    calls: list[tuple] = []
    state = TrackerState(rows=rows, start_step=0, resumed_at=4, attempts=1, last_checkpoint=4,
                         final_metrics=None, stopping=False)  # fmt: skip
    progress = type("Tracker", (), {})()
    progress.poll, progress.answered = _Method(calls, "poll", state), _Method(calls, "answered")
    monkeypatch.setattr(ray, "get", lambda value: value)
    monkeypatch.setattr(ray.tune, "report", lambda result: calls.append(("report", result["step"])))
    sweep = api.SweepSpec.model_validate({"searchSpace": {"learningRate": {"choice": [1e-3]}}})
    _TrialFollower(progress, history, sweep, total_steps=8).poll()
    return calls


def test_a_trial_s_new_evaluation_goes_to_tune_before_rank_0_is_answered(tmp_path, monkeypatch):
    calls = follow(tmp_path, monkeypatch, [{"step": 5, "loss": 5.0},
                                           {"step": 6, "loss": 4.5, "eval_loss": 4.0}])  # fmt: skip
    assert calls == [("poll",), ("report", 6), ("answered", 6)]


def test_rows_history_already_holds_answer_rank_0_without_tune(tmp_path, monkeypatch):
    # A resumed attempt sends its checkpoint's rows again; rank 0 waits at step 4's evaluation.
    calls = follow(tmp_path, monkeypatch, [{"step": 4, "loss": 6.0, "eval_loss": 5.0}])
    assert calls == [("poll",), ("answered", 4)]


def test_a_stopped_trial_started_again_reports_where_it_stopped_and_trains_no_more(
    tmp_path, monkeypatch
):
    # After a SIGKILL, Tune may restore a trial ASHA had stopped as unfinished; Tune's
    # metric check wants the metric in that run's results, and nothing else may happen.
    import json

    import ray.tune
    from finetune_trainer.sweep.trial import _report_last_evaluation

    history = tmp_path / "history.jsonl"
    rows = [{"step": 0, "eval_loss": 6.0}, {"step": 1, "loss": 5.9},
            {"step": 2, "loss": 5.8, "eval_loss": 5.7}, {"step": 3, "loss": 5.6}]  # fmt: skip
    history.write_text("".join(json.dumps(row) + "\n" for row in rows))
    reported: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", reported.append)
    sweep = api.SweepSpec.model_validate({"searchSpace": {"learningRate": {"choice": [1e-3]}}})
    _report_last_evaluation(history, sweep, total_steps=8)
    assert reported == [{"step": 2, "eval_loss": 5.7}]
