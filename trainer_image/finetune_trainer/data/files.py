"""Which files of a source folder (or S3 prefix) are data, and why the others are skipped.

Names are matched in any case (`TRAIN.JSONL`, `part-0.Parquet`, `dump.jsonl.GZ`). What
is not read is never dropped silently: every skipped file comes back with a reason, for
data_report.json and the console. Hidden files and folders (`.git`, `.ipynb_checkpoints`,
macOS `._*` forks) and editor droppings are skipped because they hold copies or junk,
not data, and are reported like the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

FORMATS = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
# The compressions the standard library reads; the stream is decompressed on the fly.
COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}
UNREAD_COMPRESSIONS = {".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4", ".snappy": "snappy"}
ARCHIVES = (".zip", ".tar", ".tgz", ".7z", ".rar")
DATA_FILES = ".jsonl, .json or .parquet, optionally .gz, .bz2 or .xz compressed"
# Kept in the report; past this a count stands for the rest (a folder may hold millions).
SKIPPED_LISTED = 100


@dataclass(frozen=True)
class FileKind:
    format: str  # jsonl, json or parquet
    compression: str | None  # a key of COMPRESSIONS' values, or None


@dataclass
class SkippedFile:
    file: str
    reason: str


def file_kind(name: str) -> FileKind | None:
    """How to read a file by its name, in any case; None when it is no data file."""
    lower = name.lower()
    compression = next((c for s, c in COMPRESSIONS.items() if lower.endswith(s)), None)
    if compression:
        lower = lower.rsplit(".", 1)[0]
    fmt = FORMATS.get(PurePosixPath(lower).suffix)
    if fmt is None or (fmt == "parquet" and compression):
        return None
    return FileKind(fmt, compression)


def skip_reason(relative: str) -> str | None:
    """Why a file found in a source folder is not read (relative to that folder), or None."""
    parts = PurePosixPath(relative).parts
    base = parts[-1]
    lower = base.lower()
    if any(part.startswith(".") for part in parts[:-1]):
        return "in a hidden folder"
    if base.startswith("."):
        return "hidden file"
    if lower.endswith(("~", ".swp", ".swo", ".tmp", ".bak")) or base.startswith("#"):
        return "editor backup, lock or temporary file"
    if file_kind(base) is not None:
        return None
    return unreadable(lower) or f"not a data file ({DATA_FILES})"


def unreadable(name: str) -> str | None:
    """Why a file is plainly data we cannot read (other compressions, archives), or None."""
    lower = name.lower()
    suffix = PurePosixPath(lower).suffix
    if suffix in UNREAD_COMPRESSIONS:
        return (
            f"{UNREAD_COMPRESSIONS[suffix]}-compressed, which is not read "
            "(decompress it, or recompress it with gzip)"
        )
    if suffix in ARCHIVES or lower.endswith(".tar.gz"):
        return "an archive, which is not read (unpack it into the folder)"
    if lower.removesuffix(suffix).endswith(".parquet"):
        return "compressed Parquet, which is not read (Parquet compresses itself; store it as is)"
    return None


def printable(name: str) -> str:
    """A file name safe to print: bytes that are not UTF-8 shown as escapes."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
