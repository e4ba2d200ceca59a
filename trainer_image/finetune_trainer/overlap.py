"""Refuse an output location that would write over the job's own inputs.

`prepare` and `run` write train.jsonl, checkpoints/ and the weights into the output
folder; pointed at the folder holding the data (or at the model's folder), they would
replace the user's dataset with the cleaned split. Local paths are compared as real paths
(symlinks resolved), which also covers pvc:// paths as mounted in a pod; s3:// as keys.
"""

from __future__ import annotations

import os
from pathlib import Path

from finetune_operator import api
from finetune_operator.errors import UserError

from finetune_trainer.storage import parse_uri, resolve_local


class OutputOverlapsSource(UserError):
    """The output location is, holds or lies inside one of the job's sources."""


def input_locations(spec: api.FineTuneJobSpec) -> list[tuple[str, str]]:
    """(field, URI) of everything the job reads: its data sources and the model."""
    dataset = spec.dataset
    inputs = [
        (f"spec.dataset.{role}.source", source.source)
        for role, source in (
            ("train", dataset.train),
            ("validation", dataset.validation),
            ("test", dataset.test),
        )
        if source is not None
    ]
    inputs += [(f"spec.dataset.mix[{i}].source", mix.source) for i, mix in enumerate(dataset.mix)]
    inputs += [
        (f"spec.evaluation.retention[{i}].source", kept.source)
        for i, kept in enumerate(spec.evaluation.retention)
    ]
    return [*inputs, ("spec.model.source", spec.model.source)]


def check_output_clear_of_sources(
    output: str, spec: api.FineTuneJobSpec, *, base_dir: Path | None, what: str
) -> None:
    """Raise OutputOverlapsSource when `output` equals, contains or lies inside an input."""
    out_keys = _comparable(output, base_dir)
    for field, source in input_locations(spec):
        for source_key in _comparable(source, base_dir):
            clash = next((key for key in out_keys if _overlap(key, source_key)), None)
            if clash is not None:
                shown = output if clash[1] == output else f"{output} ({clash[1]})"
                raise OutputOverlapsSource(
                    f"{what} {shown} would write over {field} {source} "
                    f"({source_key[1]}): choose an output folder that neither holds nor lies "
                    "inside the job's inputs"
                )


def _comparable(uri: str, base_dir: Path | None) -> list[tuple[str, str]]:
    """(kind, normalised location) pairs to compare; none for what we cannot compare (hf://).

    A local path counts both as written and with its symlinks resolved: writing through a
    link replaces the link, writing to its target replaces the data."""
    location = parse_uri(uri)
    if location.scheme == "hf":
        return []
    if location.scheme == "s3":
        return [("s3", "/".join(p for p in f"{location.bucket}/{location.path}".split("/") if p))]
    path = resolve_local(uri, base_dir=base_dir)
    return [("local", os.path.abspath(path)), ("local", os.path.realpath(path))]


def _overlap(a: tuple[str, str], b: tuple[str, str]) -> bool:
    if a[0] != b[0]:
        return False
    return a[1] == b[1] or _inside(a[1], b[1]) or _inside(b[1], a[1])


def _inside(child: str, parent: str) -> bool:
    return child.startswith(parent.rstrip("/") + "/")
