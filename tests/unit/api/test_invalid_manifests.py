"""Every kind of mistake gets one `FILE: spec.path: reason` line naming the exact field."""

from __future__ import annotations

import pytest
import yaml
from finetune_operator.validation import validate_file

from tests.factories import MakeJob

DELETE = object()


def mutated(changes: dict) -> dict:
    job = MakeJob().obj()
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = job
        for key in parents:
            node = node.setdefault(key, {}) if not key.isdigit() else node[int(key)]
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value
    return job


# (changes to a valid job, the exact path reported, a fragment of the reason)
CASES = [
    ({"apiVersion": "finetune.io/v1"}, "apiVersion", "must be finetune.io/v1alpha1"),
    ({"kind": "FineTuningJob"}, "kind", "must be FineTuneJob"),
    ({"metadata.name": DELETE}, "metadata.name", "required"),
    ({"spec.model": DELETE}, "spec.model", "required"),
    ({"spec.output": DELETE}, "spec.output", "required"),
    ({"spec.dataset.train": DELETE}, "spec.dataset.train", "required"),
    ({"spec.model.source": "ftp://example.com/model"}, "spec.model.source", "hf://org/name"),
    ({"spec.output.destination": "hf://org/out"}, "spec.output.destination", "hf:// is read-only"),
    ({"spec.dataset.train.format": "sharegpt"}, "spec.dataset.train.format", "'messages'"),
    ({"spec.method.type": "dora"}, "spec.method.type", "'lora', 'qlora' or 'full'"),
    ({"spec.dataset.cleaning": {"dedup": "fuzzy"}}, "spec.dataset.cleaning.dedup", "'near'"),
    ({"spec.dataset.cleaning": {"overlength": "wrap"}}, "spec.dataset.cleaning.overlength", "chunk"),
    ({"spec.hyperparameters": {"precision": "int8"}}, "spec.hyperparameters.precision", "bf16"),
    ({"spec.hyperparameters": {"learningRate": 0}}, "spec.hyperparameters.learningRate", "greater than 0"),
    ({"spec.hyperparameters": {"epochs": 0}}, "spec.hyperparameters.epochs", "greater than or equal to 1"),
    ({"spec.hyperparameters": {"batchSize": "32"}}, "spec.hyperparameters.batchSize", "integer"),
    ({"spec.hyperparameters": {"warmupRatio": 1.5}}, "spec.hyperparameters.warmupRatio", "less than 1"),
    ({"spec.resources": {"workers": 0}}, "spec.resources.workers", "greater than or equal to 1"),
    ({"spec.resources": {"gpusPerWorker": -1}}, "spec.resources.gpusPerWorker", "greater than or equal to 0"),
    ({"spec.resources": {"memoryPerWorker": "lots"}}, "spec.resources.memoryPerWorker", "64Gi"),
    ({"spec.resources": {"tolerations": [{"operator": "Maybe"}]}}, "spec.resources.tolerations[0].operator", "'Exists' or 'Equal'"),
    ({"spec.deepspeed": {"zeroStage": 4}}, "spec.deepspeed.zeroStage", "less than or equal to 3"),
    ({"spec.method.lora": {"r": 0}}, "spec.method.lora.r", "greater than or equal to 1"),
    ({"spec.method.lora": {"targetModules": []}}, "spec.method.lora.targetModules", "at least 1 item"),
    ({"spec.dataset.validationSplit": 1.0}, "spec.dataset.validationSplit", "less than 1"),
    ({"spec.dataset.mix": [{"source": "s3://d/replay.jsonl"}]}, "spec.dataset.mix[0].weight", "required"),
    ({"spec.dataset.mix": [{"source": "s3://d/r.jsonl", "weight": -1}]}, "spec.dataset.mix[0].weight", "greater than 0"),
    ({"spec.evaluation": {"metrics": ["loss", "meteor"]}}, "spec.evaluation.metrics[1]", "'bleu'"),
    ({"spec.checkpointing": {"keep": 0}}, "spec.checkpointing.keep", "greater than or equal to 1"),
    ({"spec.runPolicy": {"backoffLimit": -1}}, "spec.runPolicy.backoffLimit", "greater than or equal to 0"),
    ({"spec.model.secretRef": {"name": "HF_Token"}}, "spec.model.secretRef.name", "object name"),
    ({"spec.model.trustRemoteCode": "yes please"}, "spec.model.trustRemoteCode", "boolean"),
    ({"spec.learningRate": 0.1}, "spec.learningRate", "unknown field; allowed here: model, dataset"),
    ({"spec.dataset.train.path": "x"}, "spec.dataset.train.path", "unknown field; allowed here: source, format"),
    ({"spec.dataset.cleaning": {"redactPii": True}}, "spec.dataset.cleaning.redactPii", "redactPII"),
    # Rules only CEL can express (cross-field):
    ({"spec.dataset.validationSplit": 0.6, "spec.dataset.testSplit": 0.5}, "spec.dataset.testSplit", "below 1"),
    ({"spec.method.type": "qlora", "spec.resources": {"gpusPerWorker": 0}}, "spec.method.type", "CUDA GPU"),
    ({"spec.method.type": "full", "spec.output.mergeAdapter": True}, "spec.output.mergeAdapter", "lora and qlora"),
    ({"spec.evaluation": {"earlyStopping": {}}, "spec.dataset.validationSplit": 0}, "spec.evaluation.earlyStopping", "validation data"),
    ({"spec.evaluation": {"metrics": ["bleu"]}}, "spec.evaluation.metrics", "test set"),
    ({"spec.resources": {"workers": 4, "gpusPerWorker": 8}, "spec.hyperparameters": {"batchSize": 16}}, "spec.hyperparameters.batchSize", "training ranks"),
    ({"spec.hyperparameters": {"batchSize": 8, "microBatchSize": 16}}, "spec.hyperparameters.microBatchSize", "must not exceed"),
    ({"spec.deepspeed": {"zeroStage": 2, "offloadParams": True}}, "spec.deepspeed.offloadParams", "zeroStage 3"),
    ({"spec.deepspeed": {"zeroStage": 0, "offloadOptimizer": True}}, "spec.deepspeed.offloadOptimizer", "zeroStage 1"),
    ({"metadata.name": "a" * 48}, "metadata.name", "at most 47"),
    ({"metadata.name": "9-lives"}, "metadata.name", "DNS-1035"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "path", "reason"), CASES, ids=[c[1] + ":" + c[2] for c in CASES]
)
def test_mistake_is_reported_at_its_field(tmp_path, changes, path, reason):
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(mutated(changes)))
    lines = validate_file(manifest)
    prefix = f"{manifest}: {path}: "
    matching = [line for line in lines if line.startswith(prefix)]
    assert matching, f"no line for {path}; got {lines}"
    assert any(reason in line for line in matching), matching


def test_there_are_at_least_25_distinct_paths():
    assert len({path for _, path, _ in CASES}) >= 25
