"""What publish leaves in serving/, the model card's "How to serve", and status.result."""

from __future__ import annotations

import json

import yaml
from finetune_trainer.model_card import model_card
from finetune_trainer.progress_server import final_result
from finetune_trainer.serving.publish import write_serving
from finetune_trainer.serving.served_model import ServedModel

from tests.factories import MakeJob


def job(destination: str):
    return (
        MakeJob("support-bot", namespace="ml-team")
        .model("pvc://models/llama-8b")
        .output(destination)
        .typed()
    )


def test_a_claim_output_gets_the_record_and_both_manifests(tmp_path):
    serving = write_serving(tmp_path, job("pvc://outputs/support-bot"), "pvc://outputs/support-bot")
    assert serving.manifests_uri == "pvc://outputs/support-bot/serving"
    assert sorted(p.name for p in (tmp_path / "serving").iterdir()) == [
        "kserve.yaml",
        "served_model.json",
        "vllm.yaml",
    ]
    record = ServedModel.from_json(
        (tmp_path / "serving" / "served_model.json").read_text(), where="x"
    )
    assert (
        record == serving.served
        and record.kind == "lora"
        and record.base_model == "pvc://models/llama-8b"
    )
    kserve = list(yaml.safe_load_all((tmp_path / "serving" / "kserve.yaml").read_text()))
    assert (
        kserve[-1]["spec"]["predictor"]["storageUris"][1]["uri"]
        == "pvc://outputs/support-bot/adapter"
    )


def test_a_local_output_gets_the_record_only_and_says_why(tmp_path):
    serving = write_serving(tmp_path, job("/data/out"), str(tmp_path))
    assert serving.manifests_uri is None and "no serving pod can reach it" in (
        serving.problem or ""
    )
    assert [p.name for p in (tmp_path / "serving").iterdir()] == ["served_model.json"]


def test_the_model_card_says_how_to_serve(tmp_path):
    finetune_job = job("pvc://outputs/support-bot")
    card = model_card(
        finetune_job,
        {"eval_loss": 1.0},
        {},
        write_serving(tmp_path, finetune_job, "pvc://outputs/support-bot"),
    )
    section = card.split("## How to serve", 1)[1]
    assert "`pvc://outputs/support-bot/serving`" in section
    assert (
        "finetune serve-manifest pvc://outputs/support-bot --only vllm | kubectl apply -f -"
        in section
    )
    assert "kubectl port-forward svc/support-bot-vllm 8000:8000" in section
    assert '"model": "support-bot"' in section and "support-bot-base" in section


def test_the_model_card_of_a_local_output_says_what_to_do_first(tmp_path):
    card = model_card(
        job("/data/out"), {}, {}, write_serving(tmp_path, job("/data/out"), str(tmp_path))
    )
    section = card.split("## How to serve", 1)[1]
    assert (
        "no serving pod can reach it" in section
        and f"finetune serve-manifest {tmp_path} --output-uri URI" in section
    )


def test_status_result_names_the_manifests():
    result = final_result("pvc://outputs/x", {"eval_loss": 1.5}, "pvc://outputs/x/serving")
    assert result.to_wire() == {"outputUri": "pvc://outputs/x", "metrics": {"eval_loss": 1.5},
                                "servingUri": "pvc://outputs/x/serving"}  # fmt: skip
    assert "servingUri" not in json.dumps(final_result("/tmp/x", {}).to_wire())
