"""A whole `finetune run` whose model, data, checkpoints and outputs all live in S3."""

from __future__ import annotations

import json

import pytest
import yaml
from finetune_operator.cli import main

from tests.factories import MakeJob, write_job
from tests.records import write_chat_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_run_reads_from_and_writes_to_s3(s3, s3_ray, tmp_path, monkeypatch):
    from finetune_trainer.tiny_model import write_tiny_model
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_chat_data(tmp_path / "local" / "train.jsonl", 60)
    model = write_tiny_model(tmp_path / "local" / "tiny", [data], vocab_size=384, hidden_size=64)
    for bucket in ("models", "data", "out"):
        s3.mkdir(bucket)
    s3.put_file(str(data), "data/chat/train.jsonl")
    for file in sorted(p for p in model.rglob("*") if p.is_file()):
        s3.put_file(str(file), f"models/tiny/{file.relative_to(model).as_posix()}")
    monkeypatch.setenv("FINETUNE_MODEL_CACHE", str(tmp_path / "model-cache"))
    monkeypatch.setenv("FINETUNE_STAGING_DIR", str(tmp_path / "staging"))
    manifest = (
        MakeJob.trainer()
        .spec(
            model={"source": "s3://models/tiny"},
            dataset={"train": {"source": "s3://data/chat/train.jsonl", "format": "messages"}},
            hyperparameters={"maxSteps": 2},
            # Only what S3 changes is under test: loss only, since generating samples is slow on CPU.
            evaluation={"everySteps": 2, "metrics": ["loss"], "maxGenerationSamples": 1},
            checkpointing={"everySteps": 2, "keep": 1},
            output={"destination": "s3://out/run1"},
        )
        .obj()
    )
    job = write_job(tmp_path, manifest)

    assert main(["run", str(job), "--workers", "1"]) == 0

    keys = [key.removeprefix("out/run1/") for key in s3.find("out/run1")]
    for name in ["metrics.json", "history.jsonl", "data_report.json", "loss.png", "README.md",
                 "adapter/adapter_config.json", "serving/served_model.json", "serving/vllm.yaml",
                 "serving/kserve.yaml"]:  # fmt: skip
        assert name in keys, name
    # The serving manifests point at the adapter the run uploaded and the base it trained on.
    *_, service = yaml.safe_load_all(s3.cat_file("out/run1/serving/kserve.yaml"))
    assert service["spec"]["predictor"]["storageUris"] == [
        {"uri": "s3://models/tiny", "mountPath": "/mnt/models/base"},
        {"uri": "s3://out/run1/adapter", "mountPath": "/mnt/models/adapter"},
    ]
    assert "## How to serve" in s3.cat_file("out/run1/README.md").decode()
    # Ray Train wrote the checkpoint straight to S3, under the run's name.
    checkpoints = [k for k in keys if k.startswith("checkpoints/") and "/checkpoint_step_" in k]
    assert any("/checkpoint_step_00000002/engine/" in k for k in checkpoints), checkpoints
    metrics = json.loads(s3.cat_file("out/run1/metrics.json"))
    assert metrics["train_loss"] > 0 and "eval_loss" in metrics
    report = json.loads(s3.cat_file("out/run1/data_report.json"))
    assert report["sources"][0]["files"][0]["path"] == "s3://data/chat/train.jsonl"

    # The uploaded adapter loads on the base model the run fetched from S3.
    adapter = tmp_path / "adapter"
    for key in s3.find("out/run1/adapter"):
        target = adapter / key.removeprefix("out/run1/adapter/")
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.get_file(key, str(target))
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "model-cache" / "models" / "tiny")
    assert PeftModel.from_pretrained(base, adapter).peft_config["default"].r == 8
