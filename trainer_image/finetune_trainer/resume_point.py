"""Which checkpoint a new attempt resumes from: the newest one that every rank finished.

Ray Train records a checkpoint in its run folder's `checkpoint_manager_snapshot.json` up
to a few seconds after the ranks have persisted it, and `ray.train.get_checkpoint()`
offers only recorded ones; a driver killed in between would make its retry resume one
checkpoint interval earlier. So each rank, once `ray.train.report` has returned (its
upload is done), writes a marker into the checkpoint's folder in storage: the attempt
that saved it, the world size, and every file that rank uploaded with its size. A folder
is complete when the markers of ranks 0..world-1 are all there, all from one attempt, and
every file they list is in storage at its full size, so a kill mid-upload, a partial copy
or a truncated file never counts. A resume takes the newest complete folder when it is
newer than Ray's recorded checkpoint.

Everything here works on the pyarrow filesystem and paths Ray Train itself uses
(`ray.train.get_context().get_storage()`), local or S3. This module imports no torch.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MARKER_DIR = "complete"  # inside each checkpoint folder, one marker file per rank
CHECKPOINT_FOLDER = re.compile(r"^checkpoint_step_(\d{8})$")


@dataclass(frozen=True)
class Marker:
    """What one rank wrote into one checkpoint: its files (relative path -> bytes)."""

    rank: int
    world: int
    attempt: str  # the same on every rank of one attempt, new on every attempt
    files: dict[str, int]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Marker:
        raw = json.loads(text)
        return cls(rank=raw["rank"], world=raw["world"], attempt=raw["attempt"],
                   files=raw["files"])  # fmt: skip


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_step_{step:08d}"


def marker_name(rank: int) -> str:
    return f"rank_{rank:05d}.json"


def files_of(folder: Path) -> dict[str, int]:
    """Every file under a local folder, as the relative paths a marker lists."""
    return {
        path.relative_to(folder).as_posix(): path.stat().st_size
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def step_of(path: str) -> int | None:
    """The step of a checkpoint folder's path (`.../checkpoint_step_00000012`), if it is one."""
    match = CHECKPOINT_FOLDER.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


class RunStorage:
    """One run's folder of checkpoints on a pyarrow filesystem (as Ray Train addresses it)."""

    def __init__(self, filesystem: Any, run_path: str) -> None:
        self.fs, self.run_path = filesystem, run_path.rstrip("/")

    def folder(self, name: str) -> str:
        return f"{self.run_path}/{name}"

    def write_marker(self, checkpoint: str, marker: Marker) -> None:
        """Written last, after this rank's upload: its presence proves the files are there."""
        markers = f"{self.folder(checkpoint)}/{MARKER_DIR}"
        self.fs.create_dir(markers, recursive=True)
        with self.fs.open_output_stream(f"{markers}/{marker_name(marker.rank)}") as stream:
            stream.write(marker.to_json().encode("utf-8"))

    def checkpoint_steps(self) -> list[int]:
        """Steps of every checkpoint folder in the run, newest first."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.run_path, allow_not_found=True)
        entries = self.fs.get_file_info(selector)
        steps = (step_of(e.path) for e in entries if e.type == pyarrow.fs.FileType.Directory)
        return sorted((s for s in steps if s is not None), reverse=True)

    def is_complete(self, step: int) -> bool:
        """Every rank's marker from one attempt, and every file they list at its full size."""
        folder = self.folder(checkpoint_dir_name(step))
        stored = dict(self._files_under(folder))
        read = [self._read_marker(folder, path) for path in stored
                if path.startswith(f"{MARKER_DIR}/")]  # fmt: skip
        markers = [marker for marker in read if marker is not None]
        if not markers or len(markers) != len(read):
            return False
        first = markers[0]
        if sorted(m.rank for m in markers) != list(range(first.world)):
            return False
        return all(
            m.attempt == first.attempt
            and m.world == first.world
            and all(stored.get(path) == size for path, size in m.files.items())
            for m in markers
        )

    def newest_complete(self) -> int | None:
        return next((step for step in self.checkpoint_steps() if self.is_complete(step)), None)

    def remove(self, step: int) -> None:
        self.fs.delete_dir(self.folder(checkpoint_dir_name(step)))

    def _files_under(self, folder: str) -> Iterator[tuple[str, int]]:
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(folder, recursive=True, allow_not_found=True)
        for entry in self.fs.get_file_info(selector):
            if entry.type == pyarrow.fs.FileType.File:
                yield entry.path.removeprefix(folder).lstrip("/"), entry.size

    def _read_marker(self, folder: str, relative: str) -> Marker | None:
        """None for a marker that is half written or not ours: the folder is not complete."""
        try:
            with self.fs.open_input_stream(f"{folder}/{relative}") as stream:
                return Marker.from_json(stream.read().decode("utf-8"))
        except (ValueError, KeyError, TypeError):
            return None


def unrecorded_resume_step(run: RunStorage, recorded: int | None) -> int | None:
    """The newest complete checkpoint's step when it is newer than Ray's recorded one
    (`recorded`, None when Ray recorded none); None when Ray's checkpoint is the one."""
    newest = run.newest_complete()
    if newest is None or (recorded is not None and newest <= recorded):
        return None
    return newest
