"""What the trainer would refuse after Ray starts is refused by `finetune validate` first.

Each row changes a valid job; `finetune validate` (and so the operator) must print one
line naming the field: pvc:// paths that leave their claim, a destination that would
overwrite a source, a batch that does not split over the ranks, data formats the data
stage cannot mix, and a model source that cannot name a model folder.
"""

from __future__ import annotations

import itertools

import pytest
import yaml
from finetune_operator import static_checks
from finetune_operator.validation import InvalidSpec, validate_file
from finetune_trainer.data import formats

from tests.factories import MakeJob

DEST = "spec.output.destination"
HP = "spec.hyperparameters"
ON_CLAIM = {"spec.dataset.train.source": "pvc://c/data/train.jsonl"}

# (dotted field -> value, the path reported, a fragment of the reason)
REFUSED = [
    # pvc:// paths that climb out of the claim, for sources and the destination.
    ({DEST: "pvc://claim/../.."}, DEST, "leaves the claim"),
    ({DEST: "pvc://claim/out/../../x"}, DEST, "'..' climbs above pvc://claim/"),
    ({"spec.dataset.train.source": "pvc://data/../other/train.jsonl"}, "spec.dataset.train.source", "leaves the claim"),
    ({"spec.model.source": "pvc://models/.."}, "spec.model.source", "leaves the claim"),
    ({"spec.dataset.mix": [{"source": "pvc://d/../../r.jsonl", "weight": 0.1}]}, "spec.dataset.mix[0].source", "leaves the claim"),
    # A destination that is, holds or lies inside a source.
    ({**ON_CLAIM, DEST: "pvc://c/data"}, DEST, "pvc://c/data holds spec.dataset.train.source (pvc://c/data/train.jsonl)"),
    ({**ON_CLAIM, DEST: "pvc://c/data/train.jsonl"}, DEST, "is the same location as spec.dataset.train.source"),
    ({**ON_CLAIM, DEST: "pvc://c/"}, DEST, "holds spec.dataset.train.source"),
    ({"spec.dataset.train.source": "pvc://c/data", DEST: "pvc://c/out/../data/x"}, DEST, "pvc://c/out/../data/x lies inside"),
    ({"spec.dataset.train.source": "pvc://c/data/", DEST: "pvc://c/data/out"}, DEST, "lies inside spec.dataset.train.source"),
    ({"spec.dataset.train.source": "/srv/data/train.jsonl", DEST: "/srv/data"}, DEST, "holds spec.dataset.train.source"),
    ({"spec.dataset.train.source": "file:///srv/data/train.jsonl", DEST: "/srv/./data/"}, DEST, "holds"),
    ({"spec.dataset.train.source": "data/train.jsonl", DEST: "data"}, DEST, "holds"),
    ({"spec.dataset.validation": {"source": "s3://bkt/d/val.jsonl"}, DEST: "s3://bkt/d"}, DEST, "spec.dataset.validation.source"),
    ({"spec.model.source": "pvc://m/llama", DEST: "pvc://m/llama"}, DEST, "spec.model.source"),
    # Batch size against the ranks (workers x gpusPerWorker), as the trainer's plan_batch.
    ({f"{HP}.batchSize": 10, "spec.resources": {"workers": 4, "gpusPerWorker": 1}}, f"{HP}.batchSize", "cannot be split evenly over 4 training ranks"),
    ({f"{HP}.batchSize": 24, "spec.resources": {"workers": 2, "gpusPerWorker": 8}}, f"{HP}.batchSize", "use a multiple of 16"),
    ({f"{HP}.batchSize": 9, "spec.resources": {"workers": 2, "gpusPerWorker": 0}}, f"{HP}.batchSize", "over 2 training ranks"),
    ({f"{HP}.batchSize": 32, f"{HP}.microBatchSize": 3, "spec.resources": {"workers": 2}}, f"{HP}.microBatchSize", "does not divide the 16 sequences"),
    # Formats the data stage cannot mix with the training format.
    ({"spec.dataset.train.format": "preference", "spec.dataset.validation": {"source": "s3://dd/v.jsonl", "format": "messages"}}, "spec.dataset.validation.format", "messages records cannot be used with preference training data"),
    ({"spec.dataset.train.format": "text", "spec.dataset.test": {"source": "s3://dd/t.jsonl", "format": "alpaca"}}, "spec.dataset.test.format", "alpaca records"),
    ({"spec.dataset.mix": [{"source": "s3://dd/r.jsonl", "format": "text", "weight": 0.1}]}, "spec.dataset.mix[0].format", "text records cannot be used with messages"),
    ({"spec.dataset.train.split": "validation"}, "spec.dataset.train.split", "hf:// dataset"),
    # A model source that cannot name a model folder.
    ({"spec.model.source": "hf://org/name/model.safetensors"}, "spec.model.source", "not a Hugging Face model id"),
    ({"spec.model.source": "hf://org--x/name"}, "spec.model.source", "hf://org/name"),
    ({"spec.model.source": "hf://-org/name"}, "spec.model.source", "hf://org/name"),
    ({"spec.model.source": "s3://models/llama/model.safetensors"}, "spec.model.source", "names a file"),
    ({"spec.model.source": "/models/llama.gguf"}, "spec.model.source", "Hugging Face format folder"),
]  # fmt: skip

ACCEPTED = [
    {DEST: "pvc://claim/a/../b"},
    {**ON_CLAIM, DEST: "pvc://c/outputs/run-1"},
    {**ON_CLAIM, DEST: "pvc://other/data"},
    {"spec.dataset.train.source": "pvc://c/data-v2/train.jsonl", DEST: "pvc://c/data"},
    {"spec.dataset.train.source": "/srv/data/train.jsonl", DEST: "/srv/out"},
    {"spec.dataset.train.source": "data/train.jsonl", DEST: "/data"},
    {"spec.dataset.train.source": "s3://bkt/data/train.jsonl", DEST: "s3://cc/data"},
    {f"{HP}.batchSize": 48, "spec.resources": {"workers": 3, "gpusPerWorker": 2}},
    {"spec.dataset.train.format": "messages", "spec.dataset.mix": [{"source": "s3://dd/p.jsonl", "format": "preference", "weight": 0.1}]},
    {"spec.dataset.train": {"source": "hf://acme/maths", "format": "alpaca", "split": "train"}},
    {"spec.model.source": "hf://gpt2"},
    {"spec.model.source": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
    {"spec.model.source": "/models/does-not-exist-here"},  # the cluster's path, not ours
]  # fmt: skip


def validate(tmp_path, changes: dict) -> list[str]:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(MakeJob().set_all(changes).obj()))
    return [line.removeprefix(f"{manifest}: ") for line in validate_file(manifest)]


@pytest.mark.parametrize(("changes", "path", "reason"), REFUSED, ids=[r[2] for r in REFUSED])
def test_finetune_validate_refuses_it_before_any_cluster(tmp_path, changes, path, reason):
    lines = validate(tmp_path, changes)
    matching = [line for line in lines if line.startswith(f"{path}: ")]
    assert matching, f"no line for {path}; got {lines}"
    assert any(reason in line for line in matching), matching


@pytest.mark.parametrize("changes", ACCEPTED, ids=lambda c: str(list(c.values())[-1]))
def test_what_the_trainer_accepts_stays_valid(tmp_path, changes):
    assert validate(tmp_path, changes) == []


def test_the_format_rule_is_the_data_stages():
    for source, target in itertools.product(formats.FORMATS, repeat=2):
        assert static_checks.can_convert(source, target) == formats.can_convert(source, target)


def test_the_batch_message_is_the_trainers():
    from finetune_trainer.deepspeed_config import plan_batch
    from finetune_trainer.errors import BatchSizeError

    spec = MakeJob().set_all({f"{HP}.batchSize": 10, "spec.resources.workers": 4}).typed_spec
    with pytest.raises(InvalidSpec) as refused:
        spec()
    with pytest.raises(BatchSizeError) as raised:
        plan_batch(10, 4)
    ours, theirs = str(refused.value), str(raised.value)
    assert ours.startswith(theirs.split(" training ranks")[0])
    assert ours.endswith(theirs.split(";")[-1])
