"""`finetune serve-manifest OUTPUT_DIR` on outputs as runs leave them, and on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from finetune_operator.cli import main
from finetune_trainer.serving.publish import write_serving

from tests.factories import MakeJob
from tests.unit.serving.serving_support import write_output


def serve_manifest(capsys, *args: str) -> tuple[int, list[dict], str]:
    code = main(["serve-manifest", *map(str, args)])
    captured = capsys.readouterr()
    documents = [d for d in yaml.safe_load_all(captured.out) if d] if code == 0 else []
    return code, documents, captured.err


def kinds(documents: list[dict]) -> list[str]:
    return [d["kind"] for d in documents]


@pytest.fixture
def pvc_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "pvc"
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(root))
    return root


def published(folder: Path, destination: str, **spec) -> Path:
    """An output whose run wrote serving/ (the trainer's own publish step)."""
    job = MakeJob("support-bot", namespace="ml-team").model("pvc://models/llama-8b").spec(**spec)
    write_output(folder, adapter=spec.get("method", {}).get("type") != "full",
                 model=spec.get("method", {}).get("type") == "full" or spec.get("output", {}).get("mergeAdapter", False))  # fmt: skip
    write_serving(folder, job.output(destination).typed(), destination)
    return folder


def test_an_output_on_a_claim_prints_both_ways_of_serving_it(capsys, pvc_root):
    output = published(pvc_root / "outputs" / "support-bot", "pvc://outputs/support-bot")
    code, documents, _ = serve_manifest(capsys, "pvc://outputs/support-bot")
    assert code == 0
    assert kinds(documents) == ["Deployment", "Service", "InferenceService"]
    args = documents[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "support-bot=/mnt/pvc/outputs/support-bot/adapter" in args
    assert documents[0]["metadata"]["namespace"] == "ml-team"
    # The same when named by its path under the claims' root.
    assert serve_manifest(capsys, output)[1] == documents


def test_what_the_trainer_wrote_is_what_the_command_prints(pvc_root, capsys):
    output = published(pvc_root / "outputs" / "support-bot", "pvc://outputs/support-bot")
    written = (
        (output / "serving" / "vllm.yaml").read_text()
        + "---\n"
        + (output / "serving" / "kserve.yaml").read_text()
    )
    main(["serve-manifest", str(output)])
    assert capsys.readouterr().out == written


@pytest.mark.parametrize(("spec", "storage_uri"), [
    ({"method": {"type": "full"}}, "pvc://outputs/support-bot/model"),
    ({"output": {"mergeAdapter": True}}, "pvc://outputs/support-bot/model"),
])  # fmt: skip
def test_merged_and_full_outputs_serve_model(capsys, pvc_root, spec, storage_uri):
    published(pvc_root / "outputs" / "support-bot", "pvc://outputs/support-bot", **spec)
    code, documents, _ = serve_manifest(capsys, "pvc://outputs/support-bot", "--only", "kserve")
    assert code == 0 and kinds(documents) == ["InferenceService"]
    assert documents[0]["spec"]["predictor"]["model"]["storageUri"] == storage_uri


def test_a_local_output_needs_to_say_where_the_cluster_finds_it(capsys, tmp_path, pvc_root):
    output = published(tmp_path / "out", str(tmp_path / "out"))
    assert not (output / "serving" / "vllm.yaml").exists()  # nothing a cluster could use
    code, _, err = serve_manifest(capsys, output)
    assert code == 2
    assert "no serving pod can reach it" in err and "--output-uri" in err
    code, documents, _ = serve_manifest(
        capsys, output, "--output-uri", "s3://models/support-bot/", "--only", "vllm"
    )
    assert code == 0
    (fetch,) = documents[0]["spec"]["template"]["spec"]["initContainers"]
    assert fetch["command"][-1] == "s3://models/support-bot/adapter"


def test_an_output_without_a_record_is_read_from_its_folders(capsys, pvc_root):
    write_output(pvc_root / "outputs" / "Old_Run.2", adapter=True, rank=64)
    code, _, err = serve_manifest(capsys, "pvc://outputs/Old_Run.2")
    assert code == 2 and "--base-model" in err
    code, documents, _ = serve_manifest(
        capsys, "pvc://outputs/Old_Run.2", "--base-model", "hf://org/base"
    )
    assert code == 0
    container = documents[0]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "org/base"
    assert container["args"][container["args"].index("--max-lora-rank") + 1] == "64"
    assert "old-run-2=/mnt/pvc/outputs/Old_Run.2/adapter" in container["args"]
    assert documents[2]["metadata"]["name"] == "old-run-2"


def test_a_full_model_without_a_record_needs_no_base(capsys, pvc_root):
    write_output(pvc_root / "outputs" / "full", model=True)
    code, documents, _ = serve_manifest(
        capsys, "pvc://outputs/full", "--name", "chat", "--namespace", "prod"
    )
    assert code == 0
    assert documents[2]["metadata"] == {
        "name": "chat",
        "namespace": "prod",
        "labels": documents[2]["metadata"]["labels"],
    }
    assert documents[2]["spec"]["predictor"]["model"]["storageUri"] == "pvc://outputs/full/model"


@pytest.mark.parametrize(("setup", "args", "message"), [
    (lambda root: None, [], "no such output folder"),
    (lambda root: root.mkdir(parents=True), [], "neither adapter/adapter_config.json"),
    (lambda root: write_output(root, model=True), ["--name", "Not_A_Label"], "--name 'Not_A_Label'"),
    (lambda root: write_output(root, model=True), ["--gpus", "0"], "--gpus must be at least 1"),
    (lambda root: (write_output(root, adapter=True), (root / "serving").mkdir(), (root / "serving" / "served_model.json").write_text("{not json")), [], "not a served-model record"),
    (lambda root: (write_output(root, model=True), (root / "serving").mkdir(), (root / "serving" / "served_model.json").write_text(json.dumps({"kind": "lora"}))), [], "not a served-model record"),
    (lambda root: (write_output(root, adapter=True), (root / "adapter" / "adapter_config.json").write_text("[1]")), ["--base-model", "hf://a/b"], "adapter/adapter_config.json: not a JSON object"),
])  # fmt: skip
def test_bad_input_is_one_line_naming_the_problem(capsys, pvc_root, setup, args, message):
    setup(pvc_root / "outputs" / "x")
    code, _, err = serve_manifest(capsys, "pvc://outputs/x", *args)
    assert code == 2
    assert err.startswith("finetune serve-manifest: pvc://outputs/x: ") and message in err
    assert err.count("\n") == 1


def test_a_record_whose_weights_are_gone_is_refused(capsys, pvc_root):
    output = published(pvc_root / "outputs" / "support-bot", "pvc://outputs/support-bot")
    (output / "adapter" / "adapter_config.json").unlink()
    code, _, err = serve_manifest(capsys, "pvc://outputs/support-bot")
    assert code == 2 and "says lora, but adapter/adapter_config.json is missing" in err


def test_a_moved_output_is_served_from_where_it_is_now(capsys, pvc_root):
    published(pvc_root / "archive" / "support-bot", "s3://bucket/support-bot")
    code, documents, _ = serve_manifest(capsys, "pvc://archive/support-bot", "--only", "kserve")
    assert code == 0
    assert (
        documents[0]["spec"]["predictor"]["storageUris"][1]["uri"]
        == "pvc://archive/support-bot/adapter"
    )


def test_a_lora_on_a_local_base_model_needs_to_say_where_the_cluster_finds_the_base(
    capsys, pvc_root
):
    output = pvc_root / "outputs" / "support-bot"
    write_output(output, adapter=True)
    job = MakeJob("support-bot").model("./model").output("pvc://outputs/support-bot").typed()
    assert write_serving(output, job, "pvc://outputs/support-bot").manifests_uri is None
    code, _, err = serve_manifest(capsys, output)
    assert code == 2 and "the base model ./model is not on a claim" in err and "--base-model" in err
    code, documents, _ = serve_manifest(capsys, output, "--base-model", "pvc://models/base")
    assert code == 0
    assert (
        documents[0]["spec"]["template"]["spec"]["containers"][0]["args"][0]
        == "/mnt/pvc/models/base"
    )
