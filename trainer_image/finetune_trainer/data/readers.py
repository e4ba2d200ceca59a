"""Stream raw records from a source: JSONL, JSON and Parquet files or folders, or hf://.

Readers never judge a record's shape; they yield every item with where it came from
(file and line, or row number for JSON arrays, Parquet and hf:// datasets). A line that
is not JSON is yielded with its error so the pipeline can count it. A file that cannot
be read at all (corrupt JSON document or Parquet file, missing path) raises DataError:
that is not one bad record but lost data, and guessing around it would hide it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer import storage
from finetune_trainer.errors import DataError, StorageError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
HF_MIRROR_ENV = "FINETUNE_HF_MIRROR"


@dataclass
class RawRecord:
    origin: str  # file path or hf:// id
    line: int  # JSONL line, or 1-based row number for JSON arrays, Parquet and datasets
    value: Any = None
    error: str | None = None  # set when the item is not JSON at all


@dataclass
class FileLineage:
    path: str
    sha256: str | None = None
    records: int = 0


@dataclass
class SourceLineage:
    """Where one source's records came from, for data_report.json and the model card."""

    role: str
    source: str
    format: str
    files: list[FileLineage] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "source": self.source,
            "format": self.format,
            "records": sum(f.records for f in self.files),
            "files": [vars(f) for f in self.files],
        }


def read_source(
    uri: str, lineage: SourceLineage, *, split: str | None = None, base_dir: Path | None = None
) -> Iterator[RawRecord]:
    """Every item of a source in a stable order, appending per-file lineage as it goes."""
    location = storage.parse_uri(uri)
    if location.scheme == "hf":
        yield from _read_hf(uri, location, split, lineage)
    elif location.scheme == "s3":
        yield from _read_s3(uri, location, lineage)
    else:
        path = storage.resolve_local(uri, base_dir=base_dir)
        for file in _local_files(uri, path):
            yield from _read_file(file, str(file), lineage)


def _local_files(uri: str, path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(DATA_SUFFIXES))
        if not files:
            raise DataError(f"{uri}: folder {path} holds no {', '.join(DATA_SUFFIXES)} files")
        return files
    raise DataError(f"{uri}: no such file or folder ({path})")


def _read_s3(uri: str, location: storage.Location, lineage: SourceLineage) -> Iterator[RawRecord]:
    try:
        with storage.s3_errors(uri):
            yield from _read_s3_objects(uri, location, lineage)
    except StorageError as error:  # access denied, no credentials, bucket gone mid-read
        raise DataError(str(error)) from None


def _read_s3_objects(
    uri: str, location: storage.Location, lineage: SourceLineage
) -> Iterator[RawRecord]:
    fs = storage.s3_filesystem()
    remote = storage.s3_url(location)
    if fs.isdir(remote):
        keys = sorted(k.lstrip("/") for k in fs.find(remote) if k.endswith(DATA_SUFFIXES))
        if not keys:
            raise DataError(f"{uri}: prefix holds no {', '.join(DATA_SUFFIXES)} objects")
    elif fs.exists(remote):
        keys = [remote]
    else:
        raise DataError(f"{uri}: no such object or prefix")
    for key in keys:
        with fs.open(key, "rb") as handle:
            yield from _read_stream(handle, f"s3://{key}", lineage)


def _read_file(file: Path, name: str, lineage: SourceLineage) -> Iterator[RawRecord]:
    try:
        with open(file, "rb") as handle:
            yield from _read_stream(handle, name, lineage)
    except (OSError, EOFError) as error:  # unreadable, not gzip, or a truncated .gz
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise DataError(f"{name}: cannot read: {reason}") from None


def _read_stream(handle: Any, name: str, lineage: SourceLineage) -> Iterator[RawRecord]:
    entry = FileLineage(path=name)
    lineage.files.append(entry)
    file_hash = hasher = hashlib.sha256()
    suffix = Path(name.removesuffix(".gz")).suffix
    if name.endswith(".gz"):
        # The lineage digest is of the file as stored, so it hashes the compressed bytes.
        handle = gzip.GzipFile(fileobj=_HashingReader(handle, file_hash), mode="rb")
        hasher = hashlib.sha256()  # what the item readers feed: decompressed, not reported
    if suffix == ".parquet":
        # Parquet is read from its footer backwards, so the file is hashed in a first
        # sequential pass and then streamed row group by row group.
        _hash_whole(handle, hasher)
        handle.seek(0)
        items: Iterator[RawRecord] = _parquet_items(handle, name)
    elif suffix == ".json":
        items = _json_items(_hashed_bytes(handle, hasher), name)
    else:
        items = _jsonl_items(handle, name, hasher)
    for item in items:
        entry.records += 1
        yield item
    entry.sha256 = file_hash.hexdigest()


class _HashingReader:
    """A binary reader that feeds everything read through it into a hash."""

    def __init__(self, raw: Any, hasher: Any) -> None:
        self.raw, self.hasher = raw, hasher

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.raw.read(size)
        self.hasher.update(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        # GzipFile seeks only to rewind, which a digest of one sequential pass cannot allow.
        raise io.UnsupportedOperation("a hashed stream is read once, front to back")


def _hash_whole(handle: Any, hasher: Any) -> None:
    while chunk := handle.read(1 << 20):
        hasher.update(chunk)


def _hashed_bytes(handle: Any, hasher: Any) -> bytes:
    data: bytes = handle.read()
    hasher.update(data)
    return data


def _jsonl_items(handle: Any, name: str, hasher: Any) -> Iterator[RawRecord]:
    for number, raw in enumerate(handle, start=1):
        hasher.update(raw)
        if not raw.strip():
            continue
        try:
            yield RawRecord(name, number, json.loads(raw.decode("utf-8")))
        except UnicodeDecodeError:
            yield RawRecord(name, number, error="not valid UTF-8")
        except json.JSONDecodeError as error:
            yield RawRecord(
                name, number, error=f"invalid JSON: {error.msg} at column {error.colno}"
            )


def _json_items(data: bytes, name: str) -> Iterator[RawRecord]:
    # A JSON document is parsed whole; use JSONL for data too large to hold in memory.
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(f"{name}: not valid UTF-8 (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{name}: line {error.lineno}: invalid JSON: {error.msg}") from None
    if isinstance(document, dict):
        lists = [key for key, value in document.items() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(
                f"{name}: a JSON object must hold exactly one list of records "
                f"(found {len(lists)} list fields)"
            )
        document = document[lists[0]]
    if not isinstance(document, list):
        raise DataError(f"{name}: expected a JSON array of records or an object with one list")
    for number, item in enumerate(document, start=1):
        yield RawRecord(name, number, item)


def _parquet_items(handle: Any, name: str) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        # A corrupt row group surfaces only when it is reached, so the loop is guarded too.
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield RawRecord(name, number, row)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{name}: not a readable Parquet file ({error})") from None


def _read_hf(
    uri: str, location: storage.Location, split: str | None, lineage: SourceLineage
) -> Iterator[RawRecord]:
    split = split or "train"
    name = f"{uri}[{split}]"
    lineage.files.append(entry := FileLineage(path=name))
    for number, row in enumerate(_hf_rows(uri, location, split), start=1):
        entry.records += 1
        yield RawRecord(name, number, row)


def _hf_rows(uri: str, location: storage.Location, split: str) -> Iterator[dict[str, Any]]:
    """Rows of an hf:// dataset: from a local mirror when one holds it, else via the Hub cache."""
    import datasets

    mirror = os.environ.get(HF_MIRROR_ENV)
    local = Path(mirror) / location.bucket / location.path if mirror else None
    try:
        if local is not None and local.is_dir():
            if (local / "dataset_dict.json").exists() or (local / "dataset_info.json").exists():
                loaded = datasets.load_from_disk(str(local))
                if isinstance(loaded, datasets.DatasetDict):
                    if split not in loaded:
                        raise DataError(f"{uri}: no split '{split}' (has {sorted(loaded)})")
                    loaded = loaded[split]
                yield from loaded
                return
            yield from datasets.load_dataset(str(local), split=split, streaming=True)
            return
        # Honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE. Online, rows stream from the Hub;
        # offline, the cached Arrow files are used (memory-mapped, so still not in RAM),
        # since streaming always goes to the network.
        yield from datasets.load_dataset(
            location.bucket,
            data_files=location.path or None,
            split=split,
            streaming=not datasets.config.HF_HUB_OFFLINE,
        )
    except (FileNotFoundError, ConnectionError, ValueError) as error:
        offline = datasets.config.HF_HUB_OFFLINE  # read from the environment at import
        hint = " (offline mode is on: put the dataset in the cache or in $FINETUNE_HF_MIRROR)"
        raise DataError(
            f"{uri}: cannot load split '{split}': {error}{hint if offline else ''}"
        ) from None
