"""What a finished output holds and where it lives: the one record both manifests build from.

The trainer writes it as `serving/served_model.json` beside the weights; for an output
without one (written before it existed, or copied by hand) it is read from the folders
themselves: `adapter/` means LoRA, `model/` a full fine-tune, both a merged LoRA.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from finetune_operator import api
from finetune_operator.errors import UserError

RECORD = "served_model.json"
SERVING_DIR = "serving"
Kind = Literal["lora", "merged", "full"]
KINDS: tuple[Kind, ...] = ("lora", "merged", "full")
# Where a cluster can find files: a claim it mounts or a bucket it downloads from.
CLUSTER_SCHEMES = ("pvc://", "s3://")


class NotServable(UserError):
    """The output (or its base model) is somewhere a serving pod cannot read it from."""


@dataclass(frozen=True)
class ServedModel:
    """One output, as the serving manifests need it."""

    name: str  # the job's name: a DNS-1035 label of <= 47 characters; clients ask for it
    kind: Kind
    output_uri: str  # the output folder, as the job named it (pvc://, s3:// or a path)
    base_model: str  # spec.model.source: what a LoRA adapter is served on top of
    base_revision: str = "main"
    namespace: str | None = None
    secret_name: str | None = None  # spec.model.secretRef: S3 and Hugging Face credentials
    trust_remote_code: bool = False
    lora_rank: int | None = None
    trainer_image: str | None = None  # spec.resources.image: fetches s3:// files for vLLM

    @property
    def weights_uri(self) -> str:
        """The folder a server loads: the adapter for LoRA, else the (merged) model."""
        return f"{self.output_uri}/{'adapter' if self.kind == 'lora' else 'model'}"

    @property
    def serving_uri(self) -> str:
        return f"{self.output_uri}/{SERVING_DIR}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str) -> ServedModel:
        try:
            raw: Any = json.loads(text)
            if not isinstance(raw, dict) or raw.get("kind") not in KINDS:
                raise ValueError(f"kind must be one of {', '.join(KINDS)}")
            return cls(**raw)
        except (ValueError, TypeError) as error:
            raise UserError(f"{where}: not a served-model record: {error}") from None

    def with_changes(self, **changes: Any) -> ServedModel:
        return replace(self, **{key: value for key, value in changes.items() if value is not None})

    def cluster_problem(self) -> str | None:
        """Why a pod in a cluster could not load this model's files, or None when it can."""
        if not self.output_uri.startswith(CLUSTER_SCHEMES):
            return (
                f"the output {self.output_uri} is not on a claim or in a bucket, so no serving "
                "pod can reach it: copy it to a PVC or a bucket and name that with "
                "--output-uri pvc://CLAIM/PATH or s3://BUCKET/PREFIX"
            )
        if self.kind == "lora" and not self.base_model.startswith((*CLUSTER_SCHEMES, "hf://")):
            return (
                f"the base model {self.base_model} is not on a claim, in a bucket or on the "
                "Hub, so no serving pod can reach it: name where the cluster finds it with "
                "--base-model pvc://, s3:// or hf://"
            )
        return None


def served_model_of(job: api.FineTuneJob, output_uri: str) -> ServedModel:
    """The record for what `job` writes to `output_uri` (artifacts.py decides the folders)."""
    spec = job.spec
    if spec.method.type == "full":
        kind: Kind = "full"
    else:
        kind = "merged" if spec.output.merge_adapter else "lora"
    return ServedModel(
        name=job.metadata.name,
        kind=kind,
        output_uri=output_uri.rstrip("/"),
        base_model=spec.model.source,
        base_revision=spec.model.revision,
        namespace=job.metadata.namespace,
        secret_name=spec.model.secret_ref.name if spec.model.secret_ref else None,
        trust_remote_code=spec.model.trust_remote_code,
        lora_rank=spec.method.lora.r if spec.method.type != "full" else None,
        trainer_image=spec.resources.image,
    )
