"""What produced a run's checkpoints, so that a changed job never resumes from them.

Ray Train resumes any run whose name (job name + UID) has checkpoints, whatever the job
now says: a rerun with new data or hyperparameters would "resume" at the last step, train
nothing and ship the old weights under a model card describing the new job. So each run
folder holds `lineage.json`: the fields that decide the trained weights, digests of the
prepared train and validation splits, and the number of training ranks. A rerun resumes
only when they match; otherwise it refuses before training (`check`, which writes nothing),
or, with `--fresh`, moves the old checkpoints aside, never deleting them (`claim`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from finetune_operator import api
from finetune_operator.errors import UserError

from finetune_trainer.storage import parse_uri, s3_errors, s3_filesystem, s3_url

LINEAGE_FILE = "lineage.json"
# Spec fields that do not change the trained weights: where things go, how they run, and
# how often they are saved. The data order depends only on the seed and the global batch
# (batches.micro_batches_for_step), so the split into micro batches does not matter either.
IGNORED = {
    "hyperparameters": {"microBatchSize", "gradientCheckpointing", "torchCompile"},
    "evaluation": {"metrics", "maxGenerationSamples"},
    "deepspeed": {"offloadOptimizer", "offloadParams"},
}
COMPARED = ("model", "dataset", "method", "hyperparameters", "evaluation", "deepspeed")
SOURCE_ROLES = ("train", "validation", "test")


class CheckpointsFromAnotherJob(UserError):
    """The run's checkpoints were trained from another spec or other data."""


@dataclass(frozen=True)
class Lineage:
    spec: dict[str, Any]  # dotted field -> value, for the fields that decide the weights
    data: dict[str, str]  # split -> sha256 of its prepared records
    ranks: int  # ZeRO partitions optimizer state per rank: a resume needs as many

    def to_json(self) -> str:
        return json.dumps({"spec": self.spec, "data": self.data, "ranks": self.ranks}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Lineage:
        raw = json.loads(text)
        return cls(spec=raw["spec"], data=raw["data"], ranks=raw["ranks"])


def lineage_of(spec: api.FineTuneJobSpec, splits: dict[str, list[Any]], ranks: int) -> Lineage:
    """The lineage of a run of `spec` on the prepared records in `splits`."""
    dumped = spec.model_dump(by_alias=True, mode="json")
    fields: dict[str, Any] = {}
    for section in COMPARED:
        values = dumped[section] or {}
        values = {k: v for k, v in values.items() if k not in IGNORED.get(section, set())}
        fields |= _flatten(values, f"spec.{section}")
    # Where the data lives does not matter, only what it holds (the digests below).
    for role in SOURCE_ROLES:
        fields.pop(f"spec.dataset.{role}.source", None)
    mix = fields.pop("spec.dataset.mix", [])
    fields["spec.dataset.mix"] = [{k: v for k, v in m.items() if k != "source"} for m in mix]
    data = {split: _digest(splits[split]) for split in ("train", "validation")}
    return Lineage(spec=fields, data=data, ranks=ranks)


def differences(old: Lineage, new: Lineage, *, zero_stage: int) -> list[str]:
    """What changed, as the spec fields and data splits a user recognises."""
    changed = [
        key for key in sorted(old.spec.keys() | new.spec.keys())
        if old.spec.get(key) != new.spec.get(key)
    ]  # fmt: skip
    changed += [f"the prepared {split} data" for split in new.data if old.data.get(split)
                != new.data[split]]  # fmt: skip
    if zero_stage > 0 and old.ranks != new.ranks:
        changed.append(f"the training ranks ({old.ranks} -> {new.ranks}; ZeRO cannot reshard)")
    return changed


def check(storage: str, run: str, lineage: Lineage, *, fresh: bool, zero_stage: int) -> None:
    """Refuse when `run` in `storage` has checkpoints another job made (read-only)."""
    folder = RunFolder(storage, run)
    if fresh or not folder.has_checkpoints():
        return
    recorded = folder.read_lineage()
    if recorded is None:
        raise CheckpointsFromAnotherJob(
            f"{folder.uri} holds checkpoints with no {LINEAGE_FILE} (an older trainer wrote "
            "them), so resuming could mix jobs; run again with --fresh to move them aside "
            "and train from the start"
        )
    changed = differences(recorded, lineage, zero_stage=zero_stage)
    if changed:
        raise CheckpointsFromAnotherJob(
            f"{folder.uri} holds checkpoints of a different job ({', '.join(changed)} "
            "changed); resuming would ship the old weights: run again with --fresh to move "
            "them aside and train from the start, or choose another output"
        )


def claim(storage: str, run: str, lineage: Lineage, *, fresh: bool) -> str | None:
    """Record `lineage` for the run; with `fresh`, first move its old checkpoints aside.
    Returns where they went, when they were moved."""
    folder = RunFolder(storage, run)
    moved = folder.move_aside() if fresh and folder.exists() else None
    folder.write_lineage(lineage)
    return moved


class RunFolder:
    """Ray Train's folder of one run (storage / run name), local or on S3, through fsspec."""

    def __init__(self, storage: str, run: str) -> None:
        import fsspec

        self.storage, self.run = storage.rstrip("/"), run
        self.uri = f"{self.storage}/{run}"
        location = parse_uri(self.storage)
        if location.scheme == "s3":
            self.fs, self.root = s3_filesystem(), s3_url(location)
        else:
            self.fs, self.root = fsspec.filesystem("file"), self.storage

    def exists(self) -> bool:
        with s3_errors(self.uri):
            return bool(self.fs.exists(f"{self.root}/{self.run}"))

    def has_checkpoints(self) -> bool:
        with s3_errors(self.uri):
            return bool(self.fs.glob(f"{self.root}/{self.run}/checkpoint_step_*"))

    def read_lineage(self) -> Lineage | None:
        path = f"{self.root}/{self.run}/{LINEAGE_FILE}"
        with s3_errors(self.uri):
            if not self.fs.exists(path):
                return None
            with self.fs.open(path, "r", encoding="utf-8") as handle:
                return Lineage.from_json(handle.read())

    def write_lineage(self, lineage: Lineage) -> None:
        with s3_errors(self.uri):
            self.fs.makedirs(f"{self.root}/{self.run}", exist_ok=True)
            with self.fs.open(f"{self.root}/{self.run}/{LINEAGE_FILE}", "w", encoding="utf-8") as f:
                f.write(lineage.to_json())

    def move_aside(self) -> str:
        """checkpoints/<run> -> checkpoints.old-<time>/<run>; returns the new location."""
        suffix = f".old-{time.strftime('%Y%m%d-%H%M%S')}"
        source, target = f"{self.root}/{self.run}", f"{self.root}{suffix}/{self.run}"
        with s3_errors(self.uri):
            if self.storage.startswith("s3://"):
                # S3 has no rename: copy every object, and remove the originals only after.
                for key in self.fs.find(source):
                    self.fs.copy(key, target + key.removeprefix(source))
                self.fs.rm(source, recursive=True)
            else:
                self.fs.makedirs(f"{self.root}{suffix}", exist_ok=True)
                self.fs.mv(source, target, recursive=True)
        return f"{self.storage}{suffix}/{self.run}"


def _flatten(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}.{key}")
        else:
            flat[f"{prefix}.{key}"] = value
    return flat


def _digest(records: Iterable[Any]) -> str:
    hasher = hashlib.sha256()
    for record in records:
        hasher.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        hasher.update(b"\n")
    return hasher.hexdigest()
