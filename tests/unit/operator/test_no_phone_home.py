"""Nothing leaves the building: the environment of every container we render, and of the
`finetune` process that starts a local Ray."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_operator import cli, no_phone_home
from finetune_operator.builders import build_rayjob
from finetune_operator.render import render_children
from finetune_operator.settings import Settings

from tests.factories import MakeJob, write_job
from tests.pod_security_standards import containers, pod_templates

ROOT = Path(__file__).resolve().parents[3]
# Written out, not imported: a name or value changed by mistake must fail here.
TELEMETRY_OFF = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_REPORT_URL": "off://no-usage-reports",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
FETCHES_OFF = {"TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}  # whatever the opt-in
HUB_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
QUIET_NAMES = [*TELEMETRY_OFF, *FETCHES_OFF, *HUB_OFFLINE]


def container_envs(rayjob: dict[str, Any]) -> dict[str, dict[str, str]]:
    """{"RayJob/x head containers[ray-head]": {name: value}} for every container of every pod."""
    found = {}
    for where, template in pod_templates(rayjob):
        for field, container in containers(template["spec"]):
            entries = container.get("env") or []
            names = [entry["name"] for entry in entries]
            assert len(names) == len(set(names)), f"{where} {field}: a variable set twice"
            found[f"{where} {field}"] = {entry["name"]: entry["value"] for entry in entries}
    return found


def rendered_rayjob(path: Path) -> dict[str, Any]:
    out = io.StringIO()
    assert render_children(path, image=None, output=out) == 0
    _, rayjob = yaml.safe_load_all(out.getvalue())
    return rayjob


def test_every_container_of_the_rendered_quickstart_is_quiet_and_offline():
    envs = container_envs(rendered_rayjob(ROOT / "examples" / "quickstart.yaml"))
    assert len(envs) == 3  # head, workers, submitter
    for where, env in envs.items():
        assert (TELEMETRY_OFF | FETCHES_OFF | HUB_OFFLINE).items() <= env.items(), where


@pytest.mark.parametrize(
    "path",
    ["spec.model.source", "spec.dataset.train.source", "spec.dataset.validation.source",
     "spec.dataset.test.source", "spec.dataset.mix"],
)  # fmt: skip
def test_a_job_reading_the_hub_may_reach_it_but_still_reports_nothing(path):
    job = MakeJob.operator().model("s3://models/llama").train("s3://data/train.jsonl")
    if path == "spec.dataset.mix":
        job.set(path, [{"source": "hf://org/replay", "format": "messages", "weight": 0.1}])
    else:
        job.set(path, "hf://org/thing")
        if path != "spec.model.source":
            job.set(path.replace(".source", ".format"), "messages")
    for where, env in container_envs(build_rayjob(job.typed(), Settings())).items():
        assert TELEMETRY_OFF.items() <= env.items(), where
        assert not HUB_OFFLINE.keys() & env.keys(), where  # offline would refuse the download


def test_the_hub_is_offline_when_no_source_names_it():
    job = MakeJob.operator().model("pvc://models/llama").typed()
    for where, env in container_envs(build_rayjob(job, Settings())).items():
        assert HUB_OFFLINE.items() <= env.items(), where


def test_our_values_win_over_a_secret_with_the_same_keys():
    """Kubernetes gives `env` precedence over `envFrom`: a Secret cannot switch telemetry on."""
    job = (
        MakeJob.operator().model("s3://models/llama").set("spec.model.secretRef", {"name": "creds"})
    )
    rayjob = build_rayjob(job.typed(), Settings())
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["envFrom"] == [{"secretRef": {"name": "creds"}}]
    for where, env in container_envs(rayjob).items():
        assert TELEMETRY_OFF.items() <= env.items(), where


def test_an_admin_opts_in_to_usage_statistics_for_every_pod():
    settings = Settings.from_env({"FINETUNE_TRAINER_TELEMETRY": "true"})
    assert settings.trainer_telemetry
    job = MakeJob.operator().model("s3://models/llama").typed()
    for where, env in container_envs(build_rayjob(job, settings)).items():
        assert not TELEMETRY_OFF.keys() & env.keys(), where
        assert env["FINETUNE_TELEMETRY"] == "1", where  # the driver's `finetune run` agrees
        assert FETCHES_OFF.items() <= env.items(), where
        assert HUB_OFFLINE.items() <= env.items(), where  # opting in is about statistics only
    # The same job without the opt-in carries no trace of it.
    for where, env in container_envs(build_rayjob(job, Settings())).items():
        assert "FINETUNE_TELEMETRY" not in env, where


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("False", False), ("off", False)])
def test_the_opt_in_reads_true_and_false(text, expected):
    assert Settings.from_env({"FINETUNE_TRAINER_TELEMETRY": text}).trainer_telemetry is expected


def test_the_opt_in_refuses_anything_else():
    with pytest.raises(ValueError, match="FINETUNE_TRAINER_TELEMETRY must be true or false"):
        Settings.from_env({"FINETUNE_TRAINER_TELEMETRY": "sometimes"})


def test_a_variable_the_user_set_is_their_explicit_choice():
    environ = {"RAY_USAGE_STATS_ENABLED": "1", "PATH": "/bin"}
    added = no_phone_home.apply_to_process(None, environ)
    assert environ["RAY_USAGE_STATS_ENABLED"] == "1"
    assert "RAY_USAGE_STATS_ENABLED" not in added
    assert environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and environ["HF_HUB_OFFLINE"] == "1"


def test_one_variable_opts_a_whole_process_tree_in():
    environ = {"FINETUNE_TELEMETRY": "1"}
    no_phone_home.apply_to_process(None, environ)
    assert not TELEMETRY_OFF.keys() & environ.keys()
    assert (FETCHES_OFF | HUB_OFFLINE).items() <= environ.items()


@pytest.fixture
def clean_environ(monkeypatch):
    """None of the variables set, and whatever the command sets undone afterwards."""
    for name in QUIET_NAMES:
        monkeypatch.setenv(name, "x")  # recorded, so that monkeypatch restores the original
        monkeypatch.delenv(name)


@pytest.mark.parametrize(("model", "offline"), [("model", True), ("hf://org/tiny", False)])
def test_finetune_run_quiets_its_process_before_the_trainer_starts(
    tmp_path, monkeypatch, clean_environ, model, offline
):
    from finetune_trainer import run

    seen: dict[str, str] = {}

    def fake_run(job_path, **_):
        seen.update({name: os.environ[name] for name in QUIET_NAMES if name in os.environ})
        return 0

    monkeypatch.setattr(run, "run_command", fake_run)
    job = write_job(tmp_path, MakeJob.trainer().model(model).obj())
    assert cli.main(["run", str(job)]) == 0
    assert (TELEMETRY_OFF | FETCHES_OFF).items() <= seen.items()
    assert (HUB_OFFLINE.items() <= seen.items()) is offline
    assert offline or not HUB_OFFLINE.keys() & seen.keys()


def test_finetune_prepare_and_pii_report_are_quiet_too(tmp_path, monkeypatch, clean_environ):
    from finetune_trainer.data import command, pii_audit

    seen: list[dict[str, str]] = []

    def record(*_: object, **__: object) -> int:
        seen.append({name: os.environ[name] for name in QUIET_NAMES if name in os.environ})
        return 0

    monkeypatch.setattr(command, "prepare_command", record)
    monkeypatch.setattr(pii_audit, "pii_report_command", record)
    job = write_job(tmp_path, MakeJob.trainer().obj())
    assert cli.main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    assert cli.main(["pii-report", str(tmp_path / "records.jsonl")]) == 0
    for env in seen:
        assert (TELEMETRY_OFF | FETCHES_OFF | HUB_OFFLINE).items() <= env.items()
