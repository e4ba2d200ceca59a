"""The trip to s3:// when the output destination is remote (checkpoints go there through Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_trainer.storage import s3_endpoint, s3_errors


def s3_options(uri: str) -> dict[str, Any]:
    endpoint = s3_endpoint()
    if uri.startswith("s3://") and endpoint:
        return {"client_kwargs": {"endpoint_url": endpoint}}
    return {}


def upload_dir(local: Path, uri: str) -> None:
    """Copy everything under `local` to an s3:// prefix."""
    import fsspec

    filesystem, root = fsspec.core.url_to_fs(uri, **s3_options(uri))
    with s3_errors(uri):
        for path in sorted(local.rglob("*")):
            if path.is_file():
                filesystem.put_file(
                    str(path), f"{root.rstrip('/')}/{path.relative_to(local).as_posix()}"
                )
