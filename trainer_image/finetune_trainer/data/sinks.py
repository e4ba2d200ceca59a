"""Where split records go as the pipeline produces them: lists in memory, or JSONL files.

The pipeline only appends records and, at the end, rewrites a split as a stream (to
interleave replay data into train, or drop leaked validation records), so the file sink
never holds more than one record at a time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from finetune_trainer.data.split import TEST, TRAIN, VALIDATION

SPLITS = (TRAIN, VALIDATION, TEST)
Transform = Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]]


class ListSink:
    def __init__(self) -> None:
        self.splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}

    def add(self, split: str, record: dict[str, Any]) -> None:
        self.splits[split].append(record)

    def count(self, split: str) -> int:
        return len(self.splits[split])

    def rewrite(self, split: str, transform: Transform) -> None:
        self.splits[split] = list(transform(iter(self.splits[split])))


class JsonlSink:
    """DIR/<split>.jsonl, written through .partial files renamed only by commit()."""

    def __init__(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir = out_dir
        self._counts = dict.fromkeys(SPLITS, 0)
        self._handles: dict[str, IO[str]] = {
            name: open(self._partial(name), "w", encoding="utf-8")  # noqa: SIM115 - closed in commit/abort
            for name in SPLITS
        }

    def _partial(self, split: str) -> Path:
        return self.out_dir / f"{split}.jsonl.partial"

    def add(self, split: str, record: dict[str, Any]) -> None:
        self._handles[split].write(json.dumps(record, ensure_ascii=False) + "\n")
        self._counts[split] += 1

    def count(self, split: str) -> int:
        return self._counts[split]

    def rewrite(self, split: str, transform: Transform) -> None:
        self._handles[split].close()
        source, target = self._partial(split), self.out_dir / f"{split}.jsonl.rewrite"
        count = 0
        with open(source, encoding="utf-8") as old, open(target, "w", encoding="utf-8") as new:
            for record in transform(json.loads(line) for line in old):
                new.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(target, source)
        self._counts[split] = count
        self._handles[split] = open(source, "a", encoding="utf-8")  # noqa: SIM115

    def commit(self) -> None:
        for name, handle in self._handles.items():
            handle.close()
            os.replace(self._partial(name), self.out_dir / f"{name}.jsonl")

    def abort(self) -> None:
        for name, handle in self._handles.items():
            handle.close()
            self._partial(name).unlink(missing_ok=True)
