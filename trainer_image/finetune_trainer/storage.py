"""Where data and models live: local paths, file://, pvc://claim/path, s3:// and hf://.

In a cluster the operator mounts claim C at /mnt/pvc/C, so `pvc://C/path` is the local
path /mnt/pvc/C/path; on a laptop FINETUNE_PVC_ROOT points that root somewhere else.
s3:// goes through fsspec/s3fs with credentials from the environment (AWS_* variables,
which the job's secretRef provides). This module imports no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from finetune_trainer.errors import (
    LocationError,
    StorageAccessDenied,
    StorageError,
    StorageNotFound,
)

PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
REMOTE_SCHEMES = ("s3", "hf")


@dataclass(frozen=True)
class Location:
    """A parsed storage URI: `scheme` is one of local, file, pvc, s3, hf."""

    scheme: str
    bucket: str  # s3 bucket, pvc claim or hf repo id; "" for local paths
    path: str  # key, path inside the claim, or the local path

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES


def parse_uri(uri: str) -> Location:
    """Split a source or destination URI into scheme, bucket/claim/repo and path."""
    if not uri or not uri.strip():
        raise LocationError("empty storage location")
    if uri.startswith("file://"):
        return Location("file", "", uri[len("file://") :])
    for scheme in ("pvc", "s3"):
        prefix = f"{scheme}://"
        if uri.startswith(prefix):
            bucket, _, path = uri[len(prefix) :].partition("/")
            if not bucket:
                raise LocationError(
                    f"{uri}: missing the {'claim' if scheme == 'pvc' else 'bucket'}"
                )
            if scheme == "pvc":
                return Location(scheme, bucket, _inside_claim(uri, bucket, path))
            return Location(scheme, bucket, path.strip("/"))
    if uri.startswith("hf://"):
        # hf://org/name or hf://name; an optional trailing path is a file inside the repo.
        rest = uri[len("hf://") :].strip("/")
        if not rest:
            raise LocationError(f"{uri}: missing the dataset or model name")
        parts = rest.split("/")
        repo = "/".join(parts[:2]) if len(parts) > 1 else parts[0]
        return Location("hf", repo, "/".join(parts[2:]))
    if "://" in uri:
        raise LocationError(
            f"{uri}: unsupported scheme (use a path, file://, pvc://, s3:// or hf://)"
        )
    return Location("local", "", uri)


def _inside_claim(uri: str, claim: str, path: str) -> str:
    """`path` normalised; refused when '..' climbs above the claim's root, where nothing
    is on the mounted volume (`finetune validate` refuses it too; this is the backstop)."""
    parts: list[str] = []
    for part in path.split("/"):
        if part == "..":
            if not parts:
                raise LocationError(
                    f"{uri}: '..' climbs above pvc://{claim}/; a pvc:// path must stay "
                    "inside its claim"
                )
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return "/".join(parts)


def pvc_root() -> Path:
    return Path(os.environ.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)


def resolve_local(uri: str, *, base_dir: Path | None = None) -> Path:
    """The local path of a path, file:// or pvc:// URI; relative paths resolve against base_dir."""
    location = parse_uri(uri)
    if location.scheme == "pvc":
        return pvc_root() / location.bucket / location.path
    if location.is_remote:
        raise LocationError(f"{uri}: {location.scheme}:// is not a local location")
    path = Path(location.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def s3_endpoint() -> str | None:
    """On-prem S3-compatible stores (MinIO, Ceph) are reached through an explicit endpoint."""
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL")


def s3_filesystem() -> Any:
    import fsspec

    # s3fs reads the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) itself.
    endpoint = s3_endpoint()
    options = {"client_kwargs": {"endpoint_url": endpoint}} if endpoint else {}
    return fsspec.filesystem("s3", **options)


@contextmanager
def s3_errors(uri: str) -> Iterator[None]:
    """Every failure of an S3 transfer as a StorageError naming uri.

    s3fs turns S3's answers (access denied, no such bucket) into OSErrors, but errors
    raised before any answer (no credentials, endpoint unreachable) come through as
    botocore exceptions, which callers would otherwise show as a traceback."""
    from botocore.exceptions import BotoCoreError, NoCredentialsError

    try:
        yield
    except StorageError:
        raise
    except NoCredentialsError:
        raise StorageAccessDenied(
            f"{uri}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY; "
            "in a cluster, through the job's secretRef)"
        ) from None
    except BotoCoreError as error:
        raise StorageError(f"{uri}: {error}") from None
    except OSError as error:
        message = str(error)
        raise _storage_error(error, message if uri in message else f"{uri}: {message}") from error


@contextmanager
def local_errors(path: Path) -> Iterator[None]:
    """OSErrors of local file work (permission denied, no space left) as a StorageError
    naming the file, or `path` when the error names none."""
    try:
        yield
    except StorageError:
        raise
    except OSError as error:
        message = f"{error.filename or path}: {error.strerror or error}"
        raise _storage_error(error, message) from error


def _storage_error(error: OSError, message: str) -> StorageError:
    if isinstance(error, FileNotFoundError):
        return StorageNotFound(message)
    if isinstance(error, PermissionError):
        return StorageAccessDenied(message)
    return StorageError(message)


def s3_url(location: Location) -> str:
    return f"{location.bucket}/{location.path}" if location.path else location.bucket


def open_uri(uri: str, mode: str = "rb", *, base_dir: Path | None = None) -> IO[Any]:
    """Open a local, file://, pvc:// or s3:// object."""
    location = parse_uri(uri)
    if location.scheme == "s3":
        with s3_errors(uri):
            handle: IO[Any] = s3_filesystem().open(s3_url(location), mode)
            return handle
    if location.scheme == "hf":
        raise LocationError(f"{uri}: hf:// datasets are read with `datasets`, not opened as files")
    return open(resolve_local(uri, base_dir=base_dir), mode)  # the caller closes it


def fetch_to_cache(uri: str, cache_dir: Path, *, base_dir: Path | None = None) -> Path:
    """A local copy of an s3:// object or prefix under cache_dir; local kinds resolve in place."""
    location = parse_uri(uri)
    if location.scheme == "hf":
        raise LocationError(f"{uri}: hf:// is fetched by the Hugging Face libraries")
    if location.scheme != "s3":
        return resolve_local(uri, base_dir=base_dir)
    with s3_errors(uri):
        return _fetch_s3(uri, location, cache_dir)


def _fetch_s3(uri: str, location: Location, cache_dir: Path) -> Path:
    """Download the objects whose ETag differs from the copy in the cache (all, the first time)."""
    fs = s3_filesystem()
    remote = s3_url(location)
    target = cache_dir / location.bucket / location.path
    if fs.isdir(remote):
        objects = {key.lstrip("/"): info for key, info in fs.find(remote, detail=True).items()}
        files = {key: target / key[len(remote) :].lstrip("/") for key in objects}
    elif fs.exists(remote):
        objects, files = {remote: fs.info(remote)}, {remote: target}
    else:
        raise StorageNotFound(f"{uri}: no such object or prefix")
    # The ETags of what is in the cache, beside it (not inside: the model folder stays clean).
    manifest = target.with_name(target.name + ".etags.json")
    cached = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
    for key in sorted(files):
        etag = objects[key].get("ETag")
        if etag is not None and cached.get(key) == etag and files[key].is_file():
            continue
        _download(fs, key, files[key])
        cached[key] = etag
        manifest.write_text(json.dumps(cached, indent=1, sort_keys=True), encoding="utf-8")
    return target


def _download(fs: Any, key: str, target: Path) -> None:
    """Copy one object, through a temporary name so a crash never leaves a half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with fs.open(key, "rb") as source, open(partial, "wb") as sink:
        shutil.copyfileobj(source, sink, length=1 << 20)
    partial.replace(target)
