"""The one FineTuneJob factory every test directory uses (import as `tests.factories`).

MakeJob("demo").set("spec.resources.workers", 0).obj()
MakeJob.operator("llama").spec(runPolicy={"suspend": True}).stored().obj()
MakeJob.trainer().spec(hyperparameters={"maxSteps": 2}).typed_spec()
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from finetune_operator import api
from finetune_operator.validation import parse_job

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# shared/ lives beside the checkout (../shared), or inside it on the GPU machine.
SHARED = next(
    (p for p in (REPO.parent / "shared", REPO / "shared") if p.is_dir()), REPO.parent / "shared"
)

# The tiny local job the trainer's tests run: two CPU workers, four steps of LoRA.
TRAINER_SPEC: dict[str, Any] = {
    "model": {"source": "model"},
    "dataset": {
        "train": {"source": "train.jsonl", "format": "messages"},
        "validationSplit": 0.1,
        "testSplit": 0.05,
        "maxSeqLength": 128,
        "cleaning": {"redactPII": False},
    },
    "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    "hyperparameters": {
        "maxSteps": 4,
        "batchSize": 4,
        "learningRate": 5.0e-3,
        "warmupRatio": 0.0,
        "gradientCheckpointing": False,
    },
    "evaluation": {"everySteps": 2, "maxGenerationSamples": 4},
    "deepspeed": {"zeroStage": 2},
    "resources": {"workers": 2, "gpusPerWorker": 0, "cpusPerWorker": 1},
    "checkpointing": {"everySteps": 2, "keep": 2},
    "output": {"destination": "out"},
}


def merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into `base` in place: dicts merge, anything else replaces."""
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


class MakeJob:
    """A FineTuneJob manifest built step by step; each step returns the builder."""

    def __init__(self, name: str = "demo", namespace: str | None = "default") -> None:
        """The remote job of the API tests: a Hub model, S3 data, an S3 destination."""
        metadata = {"name": name} if namespace is None else {"name": name, "namespace": namespace}
        self._job: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": api.KIND,
            "metadata": metadata,
            "spec": {
                "model": {"source": "hf://meta-llama/Llama-3.1-8B"},
                "dataset": {"train": {"source": "s3://data/train.jsonl", "format": "messages"}},
                "output": {"destination": "s3://out/demo"},
            },
        }

    @classmethod
    def operator(cls, name: str = "llama", namespace: str = "team-a") -> MakeJob:
        """The remote job as the operator's tests know it: no data format, a fresh uid."""
        job = cls(name, namespace).train("s3://data/train.jsonl", fmt=None)
        return job.output("s3://out/x").uid()

    @classmethod
    def trainer(cls, name: str = "tiny") -> MakeJob:
        """The tiny local job the trainer runs: model/ and train.jsonl beside the job file."""
        job = cls(name)
        job._job["spec"] = copy.deepcopy(TRAINER_SPEC)
        return job

    @classmethod
    def data_stage(cls, name: str = "data-test") -> MakeJob:
        """A local job for the data stage, with no namespace."""
        return cls(name, namespace=None).model("./model").train("train.jsonl").output("./out")

    def model(self, source: str) -> MakeJob:
        """Set the model's source."""
        return self.set("spec.model.source", source)

    def train(self, source: str, fmt: str | None = "messages") -> MakeJob:
        """Replace the training data with one source; `fmt=None` leaves the format out."""
        train = {"source": source} if fmt is None else {"source": source, "format": fmt}
        return self.set("spec.dataset.train", train)

    def output(self, destination: str) -> MakeJob:
        """Set where the results go."""
        return self.set("spec.output.destination", destination)

    def spec(self, **sections: Any) -> MakeJob:
        """Deep-merge camelCase spec sections: `spec(dataset={"packing": False})`."""
        merge(self._job["spec"], sections)
        return self

    def set(self, path: str, value: Any) -> MakeJob:
        """Set (replace) one dotted path, creating the dicts on the way: `set("spec.x.y", 1)`."""
        *parents, leaf = path.split(".")
        node = self._job
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(value)
        return self

    def set_all(self, fields: Mapping[str, Any]) -> MakeJob:
        """`set` for each dotted path of a table row: `set_all({"spec.x.y": 1, ...})`."""
        for path, value in fields.items():
            self.set(path, value)
        return self

    def uid(self, value: str | None = None) -> MakeJob:
        """Give the job a uid (a fresh one unless given), as the API server does."""
        return self.set("metadata.uid", value or str(uuid.uuid4()))

    def stored(self) -> MakeJob:
        """What the API server adds on create: a uid, generation 1, a creation time."""
        if "uid" not in self._job["metadata"]:
            self.uid()
        self._job["metadata"].update(generation=1, creationTimestamp="2026-01-01T00:00:00Z")
        return self

    def obj(self) -> dict[str, Any]:
        """The manifest, a fresh copy each call."""
        return copy.deepcopy(self._job)

    def typed(self) -> api.FineTuneJob:
        """The typed job, validated exactly as the operator validates it."""
        return parse_job(self.obj())

    def typed_spec(self) -> api.FineTuneJobSpec:
        """The typed spec, validated like `finetune validate` does."""
        return self.typed().spec


def write_job(folder: Path, manifest: dict[str, Any], name: str = "job.yaml") -> Path:
    """The manifest as a YAML file in `folder`, keys in the order they were built."""
    path = folder / name
    path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    return path
