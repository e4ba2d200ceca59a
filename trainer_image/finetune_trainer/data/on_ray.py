"""The data stage's per-record work on Ray Data, across the cluster's CPUs.

    read (one task per source, on the driver's node) → clean + redact (actor pool, one
    NER model per actor, blocks of records) → the driver, in the original order

Reading stays where the driver is: it sees the same files, mounts, caches and
credentials, a source is read front to back as in the driver (so every error still names
its file and line), and parsing costs little next to NER. The actors do the expensive
part. Ray Data streams blocks through both with backpressure, so memory holds a bounded
number of blocks, not the data set; `preserve_order` hands them to the driver in read
order, which is what makes the result the same for any number of workers or block size.

Rows carry pickled payloads in one binary column, because records are free-form JSON
(and Parquet values) that no one Arrow schema fits. Each source's rows end with its
lineage, or with the error that stopped its reading.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune_operator import api
from finetune_operator.errors import UserError

from finetune_trainer.data.clean import Cleaned, clean_item, make_redactor
from finetune_trainer.data.readers import RawRecord, SourceLineage, read_source

ITEM, LINEAGE, FAILED = "item", "lineage", "failed"
NODE_ID_LABEL = "ray.io/node-id"  # every Ray node carries its id as this label
TARGET_BLOCK_BYTES = 256 * 1024  # ~650 chats of 400 bytes: seconds of NER per block
Batch = dict[str, Any]


class OnRayData:
    """Cleans the sources of one data stage in a single Ray Data pipeline, started lazily."""

    def __init__(
        self,
        sources: list[tuple[str, api.DataSource]],
        cleaning: api.CleaningSpec,
        base_dir: Path | None,
        *,
        workers: int,
        block_records: int,
    ) -> None:
        self.sources, self.cleaning, self.base_dir = sources, cleaning, base_dir
        self.workers, self.block_records = max(workers, 1), max(block_records, 1)
        self._rows: Iterator[tuple[int, str, bytes]] | None = None

    def cleaned(
        self, index: int, source: api.DataSource, lineage: SourceLineage
    ) -> Iterator[Cleaned]:
        if self._rows is None:
            self._rows = self._execute()
        for source_index, kind, payload in self._rows:
            if source_index != index:  # the pipeline asks in read order; anything else is a bug
                raise RuntimeError(f"rows of source {source_index} while reading source {index}")
            value = pickle.loads(payload)  # our own read and clean tasks wrote it
            if kind == ITEM:
                yield value
            elif kind == LINEAGE:
                lineage.files, lineage.skipped = value.files, value.skipped
                lineage.skipped_count = value.skipped_count
                return
            else:
                raise value  # the reader's own error, naming its file
        raise RuntimeError(f"the rows of source {index} ended without its lineage")

    def close(self) -> None:
        if self._rows is not None:
            self._rows.close()  # type: ignore[attr-defined]  # a generator: stops the pipeline
            self._rows = None

    def _execute(self) -> Iterator[tuple[int, str, bytes]]:
        import ray
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # the determinism rests on this
        context.enable_progress_bars = False  # `finetune run` has its own progress bar
        # A task's output is merged into blocks of up to this size, and a block goes to one
        # actor: at Ray's 128 MiB default a whole source is one block and one actor does all
        # the NER. Small blocks let every actor work from the first records on.
        context.target_max_block_size = TARGET_BLOCK_BYTES
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        here = ray.get_runtime_context().get_node_id()
        count = len(self.sources)
        # Any: Ray types a UDF's batch as the union of every batch format it could pick.
        dataset: Any = ray.data.from_items([{"source": i} for i in range(count)])
        dataset = dataset.map_batches(
            read_sources,
            batch_size=1,
            fn_kwargs={
                "sources": self.sources,
                "base_dir": self.base_dir,
                "block_records": self.block_records,
            },
            # No CPU of its own: reading is light, and the actors may hold every CPU. Being
            # unlike the actors also keeps Ray Data from fusing reading into them.
            num_cpus=0,
            label_selector={NODE_ID_LABEL: here},
        )
        dataset = dataset.map_batches(
            CleanWorker,
            batch_size=self.block_records,
            batch_format="numpy",
            fn_constructor_kwargs={
                "cleaning": self.cleaning,
                "formats": [source.format for _, source in self.sources],
            },
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=1,
            udf_modifying_row_count=False,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            yield from zip(
                batch["source"].tolist(),
                batch["kind"].tolist(),
                batch["payload"].tolist(),
                strict=True,
            )


def read_sources(
    batch: Batch,
    *,
    sources: list[tuple[str, api.DataSource]],
    base_dir: Path | None,
    block_records: int,
) -> Iterator[Batch]:
    """A Ray Data task: the raw items of the sources named in batch, in blocks."""
    for index in batch["source"]:
        role, source = sources[int(index)]
        yield from _read_source_rows(int(index), role, source, base_dir, block_records)


def _read_source_rows(
    index: int, role: str, source: api.DataSource, base_dir: Path | None, block_records: int
) -> Iterator[Batch]:
    lineage = SourceLineage(role=role, source=source.source, format=source.format)
    rows = _Rows(index)
    try:
        for item in read_source(source.source, lineage, split=source.split, base_dir=base_dir):
            rows.add(ITEM, (item.origin, item.line, item.value, item.error))
            if len(rows) >= block_records:
                yield rows.take()
    except UserError as error:  # our own errors end the source; the driver raises them
        rows.add(FAILED, error)
        yield rows.take()
        return
    rows.add(LINEAGE, lineage)
    yield rows.take()


class CleanWorker:
    """A Ray Data actor: loads the redactor once, then cleans block after block."""

    def __init__(self, cleaning: api.CleaningSpec, formats: list[str]) -> None:
        self.cleaning, self.formats = cleaning, formats
        self.redactor = make_redactor(cleaning)

    def __call__(self, batch: Batch) -> Batch:
        payloads = []
        for index, kind, payload in zip(
            batch["source"], batch["kind"], batch["payload"], strict=True
        ):
            if kind == ITEM:
                item = RawRecord(*pickle.loads(payload))
                fmt = self.formats[int(index)]
                payload = pickle.dumps(clean_item(item, fmt, self.cleaning, self.redactor))
            payloads.append(payload)
        return {"source": batch["source"], "kind": batch["kind"], "payload": payloads}


class _Rows:
    """Rows of one block, column by column."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.kinds: list[str] = []
        self.payloads: list[bytes] = []

    def __len__(self) -> int:
        return len(self.kinds)

    def add(self, kind: str, value: object) -> None:
        self.kinds.append(kind)
        self.payloads.append(pickle.dumps(value))

    def take(self) -> Batch:
        block = {"source": [self.index] * len(self), "kind": self.kinds, "payload": self.payloads}
        self.kinds, self.payloads = [], []
        return block
