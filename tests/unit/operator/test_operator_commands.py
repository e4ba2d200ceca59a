"""`finetune render` and the `finetune-operator` command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from finetune_operator import main as operator_main
from finetune_operator.render import render_children
from finetune_operator.settings import Settings

from tests.factories import MakeJob
from tests.unit.operator.operator_unit_support import pruned_fields, rayjob_schema, schema_errors


def write_job(folder: Path, document: dict) -> Path:
    document = {**document, "metadata": {"name": document["metadata"]["name"]}}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_render_prints_configmap_and_valid_rayjob(tmp_path: Path) -> None:
    path = write_job(
        tmp_path, MakeJob.operator("render-me").set("spec.model.secretRef", {"name": "hf"}).obj()
    )
    out = io.StringIO()
    assert render_children(path, image="registry.local/t:9", output=out) == 0
    configmap, rayjob = list(yaml.safe_load_all(out.getvalue()))
    assert (configmap["kind"], configmap["metadata"]["name"]) == ("ConfigMap", "render-me-spec")
    assert (rayjob["kind"], rayjob["metadata"]["name"]) == ("RayJob", "render-me")
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head["containers"][0]["image"] == "registry.local/t:9"
    assert schema_errors(rayjob) == []
    assert pruned_fields(rayjob, rayjob_schema()) == []
    assert "&id" not in out.getvalue()  # no YAML anchors: plain, kubectl-friendly output


def test_render_reports_bad_fields_with_the_file(tmp_path: Path, capsys) -> None:
    path = write_job(
        tmp_path, MakeJob.operator("bad").set("spec.dataset.train.format", "csv").obj()
    )
    out = io.StringIO()
    assert render_children(path, image=None, output=out) == 1
    assert out.getvalue() == ""
    errors = capsys.readouterr().err.splitlines()
    assert errors and all(line.startswith(f"{path}: ") for line in errors)
    assert any("spec.dataset.train.format" in line for line in errors)


def test_render_missing_file(tmp_path: Path, capsys) -> None:
    assert render_children(tmp_path / "nope.yaml", image=None, output=io.StringIO()) == 1
    assert "nope.yaml: cannot read" in capsys.readouterr().err


def test_operator_arguments() -> None:
    args = operator_main.build_parser().parse_args([])
    assert (args.namespace, args.health_port, args.metrics_port) == ([], 8081, 8080)
    args = operator_main.build_parser().parse_args(
        ["--namespace", "a", "--namespace", "b", "--health-port", "9", "--metrics-port", "10"]
    )
    assert (args.namespace, args.health_port, args.metrics_port) == (["a", "b"], 9, 10)


def test_settings_from_environment() -> None:
    settings = Settings.from_env(
        {"FINETUNE_TRAINER_IMAGE": "img:1", "FINETUNE_RESYNC_SECONDS": "12.5"}
    )
    assert (settings.trainer_image, settings.resync_seconds) == ("img:1", 12.5)
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ValueError, match="FINETUNE_RESYNC_SECONDS"):
        Settings.from_env({"FINETUNE_RESYNC_SECONDS": "soon"})


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"FINETUNE_PROGRESS_PORT": "9000"}, "progress_port", 9000),
        ({"FINETUNE_PROGRESS_POLL_SECONDS": "2"}, "progress_poll_seconds", 2.0),
        ({"FINETUNE_PROGRESS_WRITE_SECONDS": "30"}, "progress_write_seconds", 30.0),
        ({"FINETUNE_PROGRESS_GRACE_SECONDS": "90"}, "progress_grace_seconds", 90.0),
        ({}, "progress_port", 8266),
        ({}, "progress_write_seconds", 15.0),
    ],
)
def test_progress_settings_from_environment(env, field, value) -> None:
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize("port", ["0", "70000", "http", "-1"])
def test_a_progress_port_that_is_no_port_is_refused(port) -> None:
    with pytest.raises(ValueError, match="FINETUNE_PROGRESS_PORT"):
        Settings.from_env({"FINETUNE_PROGRESS_PORT": port})
