"""Serving an output that lives in S3: `finetune serve-manifest s3://...`, and the vLLM pod's
init container fetching the files to where the manifest points vLLM."""

from __future__ import annotations

import pytest
import yaml
from finetune_operator.cli import main
from finetune_trainer.serving import fetch
from finetune_trainer.serving.publish import write_serving
from finetune_trainer.upload import upload_dir

from tests.factories import MakeJob
from tests.unit.serving.serving_support import write_output

pytestmark = pytest.mark.integration


@pytest.fixture
def s3_output(s3, tmp_path):
    """A LoRA output in s3://out/run1 with the serving/ folder its run wrote."""
    local = write_output(tmp_path / "staging", adapter=True, rank=16)
    (local / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 1000)
    job = (
        MakeJob("run1", namespace="ml")
        .model("s3://models/base")
        .spec(model={"secretRef": {"name": "minio"}})
    )
    write_serving(local, job.output("s3://out/run1").typed(), "s3://out/run1")
    s3.mkdir("out")
    upload_dir(local, "s3://out/run1")
    return local


def test_serve_manifest_reads_an_s3_output_and_the_init_container_fetches_what_vllm_loads(
    s3_output, tmp_path, capsys
):
    assert main(["serve-manifest", "s3://out/run1", "--only", "vllm"]) == 0
    deployment, _ = yaml.safe_load_all(capsys.readouterr().out)
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["envFrom"] == [
        {"secretRef": {"name": "minio"}}
    ]  # the job's S3 credentials and endpoint
    command = init["command"]
    assert command[:3] == ["python", "-m", "finetune_trainer.serving.fetch"]
    models = tmp_path / "models"  # the emptyDir, here a folder
    args = command[3:]
    uris = [
        uri for uri in args[2:] if uri.startswith("s3://out/")
    ]  # the base model is not in this bucket
    assert fetch.main(["--into", str(models), *uris]) == 0

    lora = pod["containers"][0]["args"]
    adapter_path = lora[lora.index("--lora-modules") + 1].split("=", 1)[1]
    fetched = models / adapter_path.removeprefix(args[1] + "/")
    assert (fetched / "adapter_model.safetensors").read_bytes() == (
        s3_output / "adapter" / "adapter_model.safetensors"
    ).read_bytes()
    assert (fetched / "adapter_config.json").is_file()


def test_fetch_names_what_it_cannot_read(s3, tmp_path, capsys):
    s3.mkdir("out")
    assert fetch.main(["--into", str(tmp_path), "s3://out/missing"]) == 2
    assert "s3://out/missing: no such object or prefix" in capsys.readouterr().err


def test_serve_manifest_on_a_missing_s3_output(s3, capsys):
    s3.mkdir("out")
    assert main(["serve-manifest", "s3://out/nothing"]) == 2
    assert "s3://out/nothing: no such output folder" in capsys.readouterr().err
