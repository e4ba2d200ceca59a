"""The trip to s3:// when the output destination is remote (checkpoints go there through Ray)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def s3_endpoint() -> str | None:
    """On-prem S3-compatible stores (MinIO, Ceph) are reached through an explicit endpoint."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")


def s3_options(uri: str) -> dict[str, Any]:
    endpoint = s3_endpoint()
    if uri.startswith("s3://") and endpoint:
        return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def upload_dir(local: Path, uri: str) -> None:
    """Copy everything under `local` to an s3:// prefix."""
    import fsspec

    from finetune_trainer.storage import s3_errors

    filesystem, root = fsspec.core.url_to_fs(uri, **s3_options(uri))
    with s3_errors(uri):
        for path in sorted(local.rglob("*")):
            if path.is_file():
                filesystem.put_file(
                    str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}"
                )
