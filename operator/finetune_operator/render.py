"""`finetune render JOB.yaml`: the ConfigMap and RayJob the operator would create."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TextIO

import yaml

from finetune_operator.builders import build_configmap, build_rayjob
from finetune_operator.settings import Settings
from finetune_operator.validation import InvalidSpec, load_job_file


def render_children(path: Path, *, image: str | None, output: TextIO) -> int:
    """Print both children as a YAML stream; problems go to stderr as `FILE: spec.x: reason`."""
    try:
        job = load_job_file(path)
    except InvalidSpec as error:
        for problem in error.problems:
            print(str(problem), file=sys.stderr)
        return 1
    settings = Settings.from_env()
    if image:
        settings = dataclasses.replace(settings, trainer_image=image)
    if not job.metadata.namespace:
        # A file usually has no namespace; kubectl would apply it to the current one.
        job.metadata.namespace = "default"
    if not job.metadata.uid:
        # The API server assigns the uid; a placeholder keeps the ownerReference well formed.
        job.metadata.uid = "00000000-0000-0000-0000-000000000000"
    documents = [build_configmap(job), build_rayjob(job, settings)]
    yaml.dump_all(documents, output, Dumper=_ReadableDumper, sort_keys=False)
    return 0


class _ReadableDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's job.yaml) as literal blocks, as a person writes them."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ReadableDumper.add_representer(str, _represent_str)
