"""The output's `serving/` folder: the record of what it holds, and the manifests that serve it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from finetune_operator import api

from finetune_trainer.serving.kserve import build_kserve
from finetune_trainer.serving.served_model import (
    RECORD,
    SERVING_DIR,
    ServedModel,
    served_model_of,
)
from finetune_trainer.serving.vllm import ServingOptions, build_vllm

VLLM_FILE = "vllm.yaml"
KSERVE_FILE = "kserve.yaml"


@dataclass(frozen=True)
class Serving:
    """What publish wrote: the record, and the manifests' folder (None when none were)."""

    served: ServedModel
    manifests_uri: str | None
    problem: str | None  # why there are no manifests


def manifests(served: ServedModel, options: ServingOptions | None = None) -> dict[str, str]:
    """File name -> YAML stream, for each way of serving `served`."""
    return {
        VLLM_FILE: dump_all(build_vllm(served, options)),
        KSERVE_FILE: dump_all(build_kserve(served, options)),
    }


def dump_all(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def write_serving(output_dir: Path, job: api.FineTuneJob, output_uri: str) -> Serving:
    """serving/served_model.json always; vllm.yaml and kserve.yaml where a cluster can
    reach the files (pvc:// and s3:// outputs; a local path gets the record only, for
    `finetune serve-manifest --output-uri` once the output is copied somewhere it can)."""
    served = served_model_of(job, output_uri)
    folder = output_dir / SERVING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECORD).write_text(served.to_json(), encoding="utf-8")
    problem = served.cluster_problem()
    if problem is not None:
        return Serving(served, None, problem)
    for name, text in manifests(served).items():
        (folder / name).write_text(text, encoding="utf-8")
    return Serving(served, served.serving_uri, None)
