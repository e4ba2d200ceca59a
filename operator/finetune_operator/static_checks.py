"""What can be known wrong from the spec alone, before a Ray cluster starts.

The trainer refuses each of these too, but only after the cluster is up and its GPU hours
are spent; here they are refused by `finetune validate` and by the operator (InvalidSpec).
Each check is a pure function of the spec returning `Problem`s; nothing reads a file or
the network (a local model path is not checked: in the cluster it is another machine's).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

from finetune_operator import api
from finetune_operator.validation import Problem

# The data stage's rule (finetune_trainer.data.formats.can_convert): records of another
# format are used only when they convert to the training format without loss.
CHAT_FORMATS = ("messages", "alpaca", "preference")
# A Hugging Face repo id: `name` or `org/name`, each part letters, digits, '-', '_', '.'.
HF_REPO_PART = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
HF_REPO_MAX = 96
# Files someone may point model.source at; the trainer loads only a model folder.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".ckpt", ".json")


def static_problems(spec: api.FineTuneJobSpec) -> list[Problem]:
    """Every problem the checks below find, in spec order."""
    return [
        *location_problems(spec),
        *batch_problems(spec),
        *format_problems(spec),
        *model_problems(spec.model),
    ]


# ---------------------------------------------------------------------------- locations


@dataclass(frozen=True)
class Place:
    """Where a location lies, for comparing two of them: its kind, root and path parts."""

    kind: str  # pvc, s3, absolute or relative
    root: str  # the claim or bucket; "" for local paths
    parts: tuple[str, ...]

    def overlaps(self, other: Place) -> bool:
        """The same place, or one inside the other."""
        if (self.kind, self.root) != (other.kind, other.root):
            return False
        shorter = min(len(self.parts), len(other.parts))
        return self.parts[:shorter] == other.parts[:shorter]


def sources(spec: api.FineTuneJobSpec) -> Iterator[tuple[str, str]]:
    """(field, uri) of every location the job reads."""
    dataset = spec.dataset
    yield "spec.model.source", spec.model.source
    yield "spec.dataset.train.source", dataset.train.source
    for name, source in (("validation", dataset.validation), ("test", dataset.test)):
        if source is not None:
            yield f"spec.dataset.{name}.source", source.source
    for index, mix in enumerate(dataset.mix):
        yield f"spec.dataset.mix[{index}].source", mix.source
    for index, kept in enumerate(spec.evaluation.retention):
        yield f"spec.evaluation.retention[{index}].source", kept.source


def pvc_parts(uri: str) -> tuple[str, tuple[str, ...] | None]:
    """The claim and the normalised path parts of a pvc:// URI; None when '..' leaves it."""
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                return claim, None
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return claim, tuple(parts)


def place_of(uri: str) -> Place | None:
    """Where `uri` lies, or None when that cannot be known statically (hf://, ~)."""
    if uri.startswith("pvc://"):
        claim, parts = pvc_parts(uri)
        return Place("pvc", claim, parts) if parts is not None else None
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return Place("s3", bucket, tuple(p for p in key.split("/") if p))
    if uri.startswith("hf://"):
        return None
    path = uri.removeprefix("file://")
    if path.startswith("~"):
        return None
    kind = "absolute" if path.startswith("/") else "relative"
    normal = posixpath.normpath(path)
    return Place(kind, "", tuple(p for p in normal.split("/") if p not in ("", ".")))


def location_problems(spec: api.FineTuneJobSpec) -> list[Problem]:
    """pvc:// paths that climb out of their claim; a destination that would overwrite a source."""
    destination = spec.output.destination
    located = [*sources(spec), ("spec.output.destination", destination)]
    problems = [
        Problem(
            field,
            f"{uri} leaves the claim: '..' climbs above pvc://{pvc_parts(uri)[0]}/, and "
            "anything outside the claim is not on the mounted volume; keep the path inside it",
        )
        for field, uri in located
        if uri.startswith("pvc://") and pvc_parts(uri)[1] is None
    ]
    output = place_of(destination)
    for field, uri in sources(spec):
        source = place_of(uri)
        if output is not None and source is not None and output.overlaps(source):
            problems.append(
                Problem(
                    "spec.output.destination",
                    f"{destination} {_relation(output, source)} {field} ({uri}): outputs "
                    "written there would overwrite or mix with the source; choose a folder "
                    "that neither is, holds nor lies inside a source",
                )
            )
    return problems


def _relation(output: Place, source: Place) -> str:
    if output.parts == source.parts:
        return "is the same location as"
    return "holds" if len(output.parts) < len(source.parts) else "lies inside"


# ---------------------------------------------------------------------------- batch size


def batch_problems(spec: api.FineTuneJobSpec) -> list[Problem]:
    """The global batch must split over the ranks as the trainer's plan_batch splits it."""
    hp, resources = spec.hyperparameters, spec.resources
    ranks = resources.workers * max(1, resources.gpus_per_worker)
    if hp.batch_size < ranks:
        return []  # the CRD's CEL rule reports this one
    if hp.batch_size % ranks:
        return [
            Problem(
                "spec.hyperparameters.batchSize",
                f"{hp.batch_size} sequences cannot be split evenly over {ranks} training ranks "
                f"({resources.workers} workers x {max(1, resources.gpus_per_worker)} "
                f"gpusPerWorker); use a multiple of {ranks}",
            )
        ]
    per_rank = hp.batch_size // ranks
    if hp.micro_batch_size is not None and per_rank % hp.micro_batch_size:
        return [
            Problem(
                "spec.hyperparameters.microBatchSize",
                f"{hp.micro_batch_size} does not divide the {per_rank} sequences each of the "
                f"{ranks} ranks gets per step (batchSize {hp.batch_size} / {ranks}); choose a "
                f"divisor of {per_rank} or null",
            )
        ]
    return []


# ---------------------------------------------------------------------------- data formats


def can_convert(source_format: str, target_format: str) -> bool:
    return source_format == target_format or (
        target_format == "messages" and source_format in CHAT_FORMATS
    )


def format_problems(spec: api.FineTuneJobSpec) -> list[Problem]:
    """Sources whose format the data stage cannot use with the training data's; `split`
    outside hf://, where the readers would ignore it."""
    dataset = spec.dataset
    target = dataset.train.format
    named: list[tuple[str, api.DataSource | None]] = [
        ("train", dataset.train),
        ("validation", dataset.validation),
        ("test", dataset.test),
        *((f"mix[{index}]", mix) for index, mix in enumerate(dataset.mix)),
    ]
    problems = []
    for name, source in named:
        if source is None:
            continue
        if not can_convert(source.format, target):
            problems.append(
                Problem(
                    f"spec.dataset.{name}.format",
                    f"{source.format} records cannot be used with {target} training data "
                    "(use the same format, or messages for chat data)",
                )
            )
        if source.split is not None and not source.source.startswith("hf://"):
            problems.append(
                Problem(
                    f"spec.dataset.{name}.split",
                    f"split selects a split of an hf:// dataset; {source.source} is a file or "
                    "folder, whose records are all read: leave split out",
                )
            )
    return problems


# ---------------------------------------------------------------------------- model


def model_problems(model: api.ModelSpec) -> list[Problem]:
    """A model source that cannot name a model folder: a malformed hub id, a single file."""
    source = model.source
    if source.startswith("hf://"):
        repo = source.removeprefix("hf://")
        parts = repo.split("/")
        malformed = (
            len(parts) > 2
            or len(repo) > HF_REPO_MAX
            or any(not HF_REPO_PART.match(p) or "--" in p or ".." in p for p in parts)
        )
        if malformed:
            return [
                Problem(
                    "spec.model.source",
                    f"{source} is not a Hugging Face model id: use hf://org/name (or hf://name), "
                    f"at most {HF_REPO_MAX} letters, digits, '-', '_' and '.'; a model is a whole "
                    "repository, not a file inside one",
                )
            ]
    elif source.rstrip("/").lower().endswith(MODEL_FILE_SUFFIXES):
        return [
            Problem(
                "spec.model.source",
                f"{source} names a file; the model source is a Hugging Face format folder "
                "(with config.json, the weights and the tokenizer)",
            )
        ]
    return []
