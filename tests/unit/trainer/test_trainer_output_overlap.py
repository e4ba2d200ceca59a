"""An output location that would write over the job's inputs is refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_operator import api
from finetune_trainer.data.command import prepare_command
from finetune_trainer.overlap import OutputOverlapsSource, check_output_clear_of_sources
from finetune_trainer.run import EXIT_BAD_INPUT, run_command

from tests.factories import MakeJob, write_job

# (spec sections, --output relative to the job's folder or None, the field the error names)
HOSTILE_OUTPUTS = {
    "the folder holding the data": ({"output": {"destination": "."}}, None, "train.source"),
    "the data file itself": ({"output": {"destination": "train.jsonl"}}, None, "train.source"),
    "the model folder": ({"output": {"destination": "model"}}, None, "model.source"),
    "inside the model folder": ({"output": {"destination": "model/out"}}, None, "model.source"),
    "--output on the data's folder": ({}, ".", "train.source"),
    "a symlink to the data's real folder": ({"output": {"destination": "alias"}}, None,
                                            "train.source"),
    "the validation file's folder": (
        {"dataset": {"validation": {"source": "held/val.jsonl", "format": "messages"}},
         "output": {"destination": "held"}}, None, "validation.source"),
    "a mix source's folder": (
        {"dataset": {"mix": [{"source": "replay/mix.jsonl", "format": "messages", "weight": 0.1}]},
         "output": {"destination": "replay"}}, None, "mix[0].source"),
    "the same pvc folder": (
        {"dataset": {"train": {"source": "pvc://data/sets/train.jsonl", "format": "messages"}},
         "output": {"destination": "pvc://data/sets"}}, None, "train.source"),
    "the same s3 prefix": (
        {"dataset": {"train": {"source": "s3://bucket/sets/train.jsonl", "format": "messages"}},
         "output": {"destination": "s3://bucket/sets/"}}, None, "train.source"),
}  # fmt: skip


@pytest.fixture
def inputs(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny job's folder, plus a link to the data's real folder and a pvc root."""
    (job_dir / "alias").symlink_to((job_dir / "train.jsonl").resolve().parent)
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(job_dir / "pvc"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return job_dir


@pytest.mark.parametrize(("sections", "override", "field"), HOSTILE_OUTPUTS.values(),
                         ids=HOSTILE_OUTPUTS.keys())  # fmt: skip
def test_run_refuses_an_output_over_its_inputs(inputs, capsys, sections, override, field):
    before = (inputs / "train.jsonl").read_bytes()
    job = write_job(inputs, MakeJob.trainer().spec(**sections).obj())
    output = inputs / override if override else None
    assert run_command(job, output=output, workers=1) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    # One line per source overwritten (`finetune validate` names each statically).
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines, err
    assert all(line.startswith("finetune run: ") and "output" in line for line in lines), err
    assert f"spec.dataset.{field}" in err or f"spec.{field}" in err, err
    assert "output" in err
    assert (inputs / "train.jsonl").read_bytes() == before
    assert not (inputs / "data_report.json").exists() and not (inputs / "checkpoints").exists()


@pytest.mark.parametrize("output", [".", "train.jsonl", "model"])
def test_prepare_refuses_an_output_over_its_inputs(inputs, capsys, output, monkeypatch):
    before = (inputs / "train.jsonl").read_bytes()
    job = write_job(inputs, MakeJob.trainer().obj())
    monkeypatch.chdir(inputs)  # --output is relative to where the user is
    assert prepare_command(job, Path(output)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--output {(inputs / output).resolve()} " in err and "spec." in err
    assert (inputs / "train.jsonl").read_bytes() == before
    assert not (inputs / "data_report.json").exists()


@pytest.mark.parametrize(
    "output", ["/data/out", "/data/train", "/data/train.jsonl.d", "s3://bucket/data", "hf://x/y"]
)
def test_outputs_beside_the_inputs_are_fine(output):
    spec = MakeJob.trainer().spec(
        model={"source": "/models/tiny"}, dataset={"train": {"source": "/data/train.jsonl"}}
    ).obj()["spec"]  # fmt: skip
    check_output_clear_of_sources(
        output, api.FineTuneJobSpec.model_validate(spec), base_dir=None, what="output"
    )


def test_an_output_holding_the_model_is_refused_as_a_user_error():
    spec = api.FineTuneJobSpec.model_validate(
        MakeJob.trainer().spec(model={"source": "/models/tiny"}).obj()["spec"]
    )
    with pytest.raises(OutputOverlapsSource, match=r"output /models .*spec\.model\.source"):
        check_output_clear_of_sources("/models", spec, base_dir=None, what="output")
