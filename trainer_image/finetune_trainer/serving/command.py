"""`finetune serve-manifest OUTPUT`: print the vLLM and KServe manifests for an existing output.

OUTPUT is the output folder as a path, pvc://CLAIM/PATH (read under FINETUNE_PVC_ROOT) or
s3://BUCKET/PREFIX. What it holds decides how it is served (serving/served_model.json when
the trainer wrote one, else adapter/ and model/ themselves); where it lives decides what the
manifests point at.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from finetune_operator import api
from finetune_operator.errors import EXIT_BAD_INPUT, UserError

from finetune_trainer.serving.publish import KSERVE_FILE, VLLM_FILE, manifests
from finetune_trainer.serving.served_model import (
    RECORD,
    SERVING_DIR,
    Kind,
    NotServable,
    ServedModel,
)
from finetune_trainer.serving.vllm import ServingOptions
from finetune_trainer.storage import parse_uri, pvc_root, resolve_local, s3_errors, s3_filesystem

ADAPTER_CONFIG = "adapter/adapter_config.json"
MODEL_CONFIG = "model/config.json"
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def serve_manifest_command(
    target: str,
    *,
    output_uri: str | None = None,
    base_model: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    only: str | None = None,
    options: ServingOptions | None = None,
    out: TextIO | None = None,
) -> int:
    """Print the manifests; 0 when printed, 2 with one line naming the problem otherwise."""
    try:
        if options is not None and options.gpus < 1:
            raise UserError(f"--gpus must be at least 1, got {options.gpus}")
        served = read_served_model(target, base_model=base_model)
        if name is not None and not (DNS_1035.match(name) and len(name) <= api.MAX_NAME_LENGTH):
            raise UserError(f"--name {name!r} is not a DNS-1035 label of at most "
                            f"{api.MAX_NAME_LENGTH} characters")  # fmt: skip
        served = served.with_changes(
            output_uri=output_uri.rstrip("/") if output_uri else None,
            base_model=base_model,
            name=name,
            namespace=namespace,
        )
        problem = served.cluster_problem()
        if problem is not None:
            raise NotServable(problem)
        files = manifests(served, options)
        chosen = {"vllm": [VLLM_FILE], "kserve": [KSERVE_FILE]}.get(only or "", list(files))
        (out or sys.stdout).write("---\n".join(files[file] for file in chosen))
    except UserError as error:
        print(f"finetune serve-manifest: {target}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def read_served_model(target: str, *, base_model: str | None = None) -> ServedModel:
    """What the output at `target` holds and where it lives, checked against its files."""
    files = _OutputFiles(target)
    record = files.read_text(f"{SERVING_DIR}/{RECORD}")
    if record is not None:
        served = ServedModel.from_json(record, where=f"{SERVING_DIR}/{RECORD}")
        needed = ADAPTER_CONFIG if served.kind == "lora" else MODEL_CONFIG
        if files.read_text(needed) is None:
            raise UserError(f"{SERVING_DIR}/{RECORD} says {served.kind}, but {needed} is missing")
        # Where the folder is now, when the cluster can see it there (it may have moved).
        return served.with_changes(output_uri=files.cluster_uri)
    return _from_folders(files, base_model)


def _from_folders(files: _OutputFiles, base_model: str | None) -> ServedModel:
    """An output without a record: adapter/ means LoRA, model/ full, both a merged LoRA."""
    adapter = _json(files, ADAPTER_CONFIG)
    has_model = files.read_text(MODEL_CONFIG) is not None
    if adapter is None and not has_model:
        raise UserError(
            f"holds neither {ADAPTER_CONFIG} (a LoRA adapter) nor {MODEL_CONFIG} (a full or "
            "merged model): not the output of a finished finetune run"
        )
    kind: Kind = "full"
    if adapter is not None:
        kind = "merged" if has_model else "lora"
    if kind == "lora" and base_model is None:
        raise UserError(
            f"holds a LoRA adapter but no {SERVING_DIR}/{RECORD} naming its base model: "
            "pass --base-model pvc://, s3:// or hf://"
        )
    rank = adapter.get("r") if adapter else None
    return ServedModel(
        name=_name_from(files.folder_name),
        kind=kind,
        output_uri=files.cluster_uri or files.display,
        base_model=base_model or "",
        lora_rank=rank if isinstance(rank, int) else None,
    )


def _json(files: _OutputFiles, path: str) -> dict[str, Any] | None:
    text = files.read_text(path)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not JSON: {error}") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: not a JSON object")
    return value


def _name_from(folder: str) -> str:
    """A DNS-1035 label from a folder's name (the job's name is usually the folder's)."""
    name = re.sub(r"[^a-z0-9-]+", "-", folder.lower()).strip("-")
    name = re.sub(r"^[^a-z]+", "", name)[: api.MAX_NAME_LENGTH].rstrip("-")
    return name or "finetuned"


class _OutputFiles:
    """Reads files of an output folder that is a path, a pvc:// folder or an s3:// prefix."""

    def __init__(self, target: str) -> None:
        location = parse_uri(target)
        self.display = target.rstrip("/")
        self.s3 = location.scheme == "s3"
        if self.s3:
            self.root = f"{location.bucket}/{location.path}".rstrip("/")
            self.cluster_uri: str | None = self.display
            with s3_errors(target):
                if not s3_filesystem().isdir(self.root):
                    raise UserError("no such output folder")
        else:
            self.local = resolve_local(target).resolve()
            if not self.local.is_dir():
                raise UserError("no such output folder")
            self.cluster_uri = _pvc_uri(self.local)
            self.display = str(self.local)
        self.folder_name = self.display.rsplit("/", 1)[-1]

    def read_text(self, path: str) -> str | None:
        """The file's text, or None when there is none."""
        if self.s3:
            with s3_errors(f"s3://{self.root}/{path}"):
                filesystem = s3_filesystem()
                key = f"{self.root}/{path}"
                return str(filesystem.cat_file(key).decode()) if filesystem.isfile(key) else None
        file = self.local / path
        return file.read_text(encoding="utf-8") if file.is_file() else None


def _pvc_uri(path: Path) -> str | None:
    """pvc://CLAIM/PATH for a folder under the PVC root (where claims are mounted), else None."""
    root = pvc_root().resolve()
    if not path.is_relative_to(root) or path == root:
        return None
    claim, *rest = path.relative_to(root).parts
    return "/".join([f"pvc://{claim}", *rest])
