"""Stream raw records from a source: JSONL, JSON and Parquet files or folders, or hf://.

Readers never judge a record's shape; they yield every item with where it came from
(file and line, or row number for JSON arrays, Parquet and hf:// datasets). A line that
is not JSON is yielded with its error so the pipeline can count it. A file that cannot
be read at all (corrupt JSON document or Parquet file, missing path) raises DataError:
that is not one bad record but lost data, and guessing around it would hide it.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import io
import json
import lzma
import os
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_trainer import storage
from finetune_trainer.data.files import (
    DATA_FILES,
    SKIPPED_LISTED,
    FileKind,
    SkippedFile,
    file_kind,
    printable,
    skip_reason,
    unreadable,
)
from finetune_trainer.errors import DataError, StorageError

# Each opens a binary stream to be read decompressed, front to back.
DECOMPRESSORS: dict[str, Callable[[Any, str], Any]] = {
    "gzip": gzip.open,
    "bzip2": bz2.open,
    "xz": lzma.open,
}
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
    skipped: list[SkippedFile] = field(default_factory=list)
    skipped_count: int = 0

    def skip(self, file: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < SKIPPED_LISTED:
            self.skipped.append(SkippedFile(file, reason))

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
        for file in _local_files(uri, path, lineage):
            yield from _read_file(file, printable(str(file)), lineage)


def _local_files(uri: str, path: Path, lineage: SourceLineage) -> list[Path]:
    if path.is_file():
        _check_named_file(uri, path.name)
        return [path]
    if path.is_dir():
        files = []
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            reason = skip_reason(file.relative_to(path).as_posix())
            if reason is None:
                files.append(file)
            else:
                lineage.skip(printable(str(file)), reason)
        if not files:
            raise DataError(f"{uri}: folder {path} holds no data files{_skipped_note(lineage)}")
        return files
    raise DataError(f"{uri}: no such file or folder ({path})")


def _check_named_file(uri: str, name: str) -> None:
    """A file named on its own is read as JSONL whatever its suffix, unless it is plainly
    something we cannot read (reading a .zip as JSONL would only count every line malformed)."""
    reason = unreadable(name)
    if reason is not None:
        raise DataError(f"{uri}: {reason}")


def _skipped_note(lineage: SourceLineage) -> str:
    if not lineage.skipped:
        return f" ({DATA_FILES})"
    shown = "; ".join(f"{s.file}: {s.reason}" for s in lineage.skipped[:3])
    return f"; skipped {lineage.skipped_count}: {shown}"


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
        keys = []
        for key in sorted(k.lstrip("/") for k in fs.find(remote)):
            reason = skip_reason(key.removeprefix(remote.rstrip("/")).lstrip("/"))
            if reason is None:
                keys.append(key)
            else:
                lineage.skip(f"s3://{key}", reason)
        if not keys:
            raise DataError(f"{uri}: prefix holds no data files{_skipped_note(lineage)}")
    elif fs.exists(remote):
        _check_named_file(uri, remote.rsplit("/", 1)[-1])
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
    except OSError as error:  # unreadable: permissions, a folder, an I/O error
        raise DataError(f"{name}: cannot read: {error.strerror or error}") from None


def _read_stream(handle: Any, name: str, lineage: SourceLineage) -> Iterator[RawRecord]:
    entry = FileLineage(path=name)
    lineage.files.append(entry)
    kind = file_kind(name) or FileKind("jsonl", None)  # a file named on its own: JSONL
    file_hash = hasher = hashlib.sha256()
    if kind.compression:
        # The lineage digest is of the file as stored, so it hashes the compressed bytes.
        handle = DECOMPRESSORS[kind.compression](_HashingReader(handle, file_hash), "rb")
        hasher = hashlib.sha256()  # what the item readers feed: decompressed, not reported
    if kind.format == "parquet":
        # Parquet is read from its footer backwards, so the file is hashed in a first
        # sequential pass and then streamed row group by row group.
        _hash_whole(handle, hasher)
        handle.seek(0)
        items: Iterator[RawRecord] = _parquet_items(handle, name)
    elif kind.format == "json":
        items = _json_items(handle, name, hasher)
    else:
        items = _jsonl_items(handle, name, hasher)
    if kind.compression:
        items = _decompressed(
            items, f"{name}: cannot read: truncated or corrupt {kind.compression} data", entry
        )
    for item in items:
        entry.records += 1
        yield item
    entry.sha256 = file_hash.hexdigest()


def _decompressed(
    items: Iterator[RawRecord], problem: str, entry: FileLineage
) -> Iterator[RawRecord]:
    """The items, with a broken compressed stream (cut short, corrupt) as one DataError
    naming the file and how many records came before the break."""
    try:
        yield from items
    except (EOFError, OSError, zlib.error, lzma.LZMAError) as error:
        # Nothing is trained on a file read only in part, so the stage stops here.
        after = f" after {entry.records} records" if entry.records else ""
        raise DataError(f"{problem}{after} ({error}); fix or remove the file") from None


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
        if number == 1:
            raw = _without_bom(raw, name)
        if not raw.strip():
            continue
        try:
            yield RawRecord(name, number, parse_json(raw))
        except BadJson as error:
            yield RawRecord(name, number, error=str(error))


def _without_bom(first: bytes, name: str) -> bytes:
    """The first line without a UTF-8 byte-order mark (editors on Windows write one)."""
    if first.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DataError(f"{name}: UTF-16 text (byte-order mark at the start); save it as UTF-8")
    return first.removeprefix(codecs.BOM_UTF8)


class BadJson(ValueError):
    """Input that is not JSON we can read; the message quotes none of it."""

    def __init__(self, reason: str, line: int | None = None) -> None:
        super().__init__(reason)
        self.line = line


def parse_json(raw: bytes) -> Any:
    """A JSON value, or BadJson with a one-line reason.

    Beyond syntax errors, hostile input can hit the parser's limits: nesting deeper than
    the recursion limit, or an integer longer than Python converts from a string."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise BadJson(f"not valid UTF-8 (byte {error.start + 1})") from None
    except json.JSONDecodeError as error:
        raise BadJson(f"invalid JSON: {error.msg} (column {error.colno})", error.lineno) from None
    except RecursionError:
        raise BadJson("invalid JSON: nested too deeply to read") from None
    except ValueError:
        limit = sys.get_int_max_str_digits()
        raise BadJson(f"invalid JSON: an integer longer than {limit} digits") from None


def _json_items(handle: Any, name: str, hasher: Any) -> Iterator[RawRecord]:
    # A JSON document is parsed whole; use JSONL for data too large to hold in memory.
    data = _hashed_bytes(handle, hasher)
    try:
        document = parse_json(_without_bom(data, name))
    except BadJson as error:
        line = f"line {error.line}: " if error.line else ""
        raise DataError(f"{name}: {line}{error}") from None
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
