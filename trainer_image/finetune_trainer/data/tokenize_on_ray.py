"""Tokenising on every core of the Ray cluster; packing stays one step on the driver.

    records → contiguous chunks → Ray tasks (render, tokenise, label, over-length policy:
    the same code as on the driver) → compact arrays → the driver, in chunk order →
    documents → best-fit decreasing packing (it needs every length) → rows

Each record's documents depend on that record alone, so chunking changes nothing: the
rows, their order and the report's counts equal the sequential path's
(tests/integration/trainer/test_tokenize_on_ray.py). The tokenizer goes to the object
store once; a worker process unpickles it once and keeps it for its later chunks. Results
come back as int32 token ids and a learned-or-not mask, not lists of Python ints, so the
object store and pickling carry a fraction of the bytes. At most one chunk per worker is
in flight, so memory holds that many chunks besides the records and the documents.
"""

from __future__ import annotations

import gc
import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from finetune_operator import api
from finetune_operator.errors import UserError

from finetune_trainer.data.engines import WORKERS_ENV
from finetune_trainer.data.formats import Record
from finetune_trainer.data.packing import (
    Row,
    check_template,
    new_overlength,
    rows_of_documents,
    within_limit,
)
from finetune_trainer.data.pairs import kept_pairs, rows_of_pairs
from finetune_trainer.data.tokenize import IGNORE_INDEX, Document

# Below this many records a split is tokenised on the driver. Measured with Ray already up
# (bench/data_stage.py's chats, 2 busy cores): the first split sent to Ray pays ~0.9 s more
# than a later one (2,000 records: 1.67 s against 0.73 s), as workers import the
# tokenizer's libraries and unpickle it: ~3,000 records of one core's work. N cores save
# (1 - 1/N) of the tokenising, so that pays from ~6,000 records on 2 cores and ~3,500 on
# 8; validation and test splits are usually smaller and stay here.
MIN_PARALLEL_RECORDS = 5_000
# Records per task: four tokenizer batches, ~0.7 s of one core, so a task's own overhead
# (milliseconds) stays under 1 % and the chunks still spread evenly over the workers.
CHUNK_RECORDS = 2_048

Pair = tuple[Document, Document]


@dataclass
class Tokenised:
    """A chunk's documents end to end: what a task sends back instead of Python lists."""

    input_ids: np.ndarray  # int32, every document's ids in order
    learned: np.ndarray  # bool per token: its label is its id (else IGNORE_INDEX)
    lengths: np.ndarray  # int32 tokens per document
    overlength: dict[str, int]


def parallel_workers(records: int) -> int | None:
    """How many Ray tasks tokenise a split of this many records at once; None: the driver.

    Ray must already be up (a run starts or joins it before the data stage); this never
    starts it. FINETUNE_DATA_WORKERS caps the tasks as it caps the cleaning actors, and 0
    keeps tokenising in the driver too."""
    import ray

    value = os.environ.get(WORKERS_ENV, "").strip()
    if value == "0" or records < MIN_PARALLEL_RECORDS or not ray.is_initialized():
        return None
    cpus = int(ray.cluster_resources().get("CPU", 0))  # type: ignore[no-untyped-call]
    wanted = int(value) if value.isdigit() else cpus
    workers = min(wanted, cpus)
    return workers if workers > 1 else None  # one task is the driver's work plus shipping


def build_rows_on_ray(
    records: list[Record],
    fmt: str,
    tokenizer: Any,
    dataset: api.DatasetSpec,
    *,
    workers: int,
    chunk_records: int = CHUNK_RECORDS,
) -> tuple[list[Row], dict[str, Any]]:
    """build_rows with the tokenising done by up to `workers` Ray tasks at once."""
    check_template(fmt, tokenizer, dataset)  # a missing template fails before any task
    overlength = new_overlength()
    documents: list[Document] = []
    with _without_cycle_collection():
        chunks = _tokenised_chunks("sft", records, fmt, tokenizer, dataset, workers, chunk_records)
        for chunk in chunks:
            documents += _documents(chunk)
            _add(overlength, chunk.overlength)
        return rows_of_documents(documents, dataset, overlength)


def build_pairs_on_ray(
    records: list[Record],
    tokenizer: Any,
    dataset: api.DatasetSpec,
    *,
    workers: int,
    chunk_records: int = CHUNK_RECORDS,
) -> tuple[list[Row], dict[str, Any]]:
    """build_pairs with the tokenising done by up to `workers` Ray tasks at once."""
    check_template("preference", tokenizer, dataset)
    overlength = new_overlength()
    pairs: list[Pair] = []
    with _without_cycle_collection():
        chunks = _tokenised_chunks(
            "dpo", records, "preference", tokenizer, dataset, workers, chunk_records
        )
        for chunk in chunks:
            documents = _documents(chunk)  # chosen, rejected, chosen, rejected, ...
            pairs += zip(documents[0::2], documents[1::2], strict=True)
            _add(overlength, chunk.overlength)
        return rows_of_pairs(pairs, dataset, overlength)


@contextmanager
def _without_cycle_collection() -> Iterator[None]:
    """The driver's share is making millions of small lists, none in a reference cycle;
    the cycle collector would rescan the growing heap over and over (measured: 0.36 s of
    0.8 s decoding 20,000 records' documents), on the one core that everything waits for."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _tokenised_chunks(
    kind: str,
    records: list[Record],
    fmt: str,
    tokenizer: Any,
    dataset: api.DatasetSpec,
    workers: int,
    chunk_records: int,
) -> Iterator[Tokenised]:
    """The chunks' results in record order, at most `workers` tasks in flight."""
    import ray

    task = ray.remote(num_cpus=1)(tokenise_chunk)
    # In a list, so that Ray hands the task the reference and the task decides whether
    # its process already holds the tokenizer.
    boxed = [ray.put(tokenizer)]
    starts = range(0, len(records), max(chunk_records, 1))

    def submit(start: int) -> Any:
        chunk = records[start : start + chunk_records]
        return task.remote(kind, boxed, chunk, fmt, dataset)

    yield from _in_order(submit, starts, max(workers, 1))


def _in_order(submit: Callable[[int], Any], starts: range, workers: int) -> Iterator[Tokenised]:
    """Waits for the oldest task before submitting past `workers`; a failure cancels the rest.

    A user-fixable error raised in a task (a template that rejects a record) is raised
    here as itself, so it reads as it does on the driver."""
    import ray
    from ray.exceptions import RayTaskError

    pending: deque[Any] = deque()
    try:
        for start in itertools.chain(starts, [None]):
            while pending and (start is None or len(pending) >= workers):
                yield ray.get(pending.popleft())
            if start is not None:
                pending.append(submit(start))
    except RayTaskError as error:
        if isinstance(error.cause, UserError):
            raise error.cause from None
        raise
    finally:
        for reference in pending:
            ray.cancel(reference)


# The tokenizer this worker process last unpickled, by object id: a large vocabulary
# takes a good part of a second to unpickle, more than a chunk takes to tokenise.
_held: dict[str, Any] = {}


def tokenise_chunk(
    kind: str, boxed: list[Any], records: list[Record], fmt: str, dataset: api.DatasetSpec
) -> Tokenised:
    """A Ray task: one chunk of records tokenised exactly as the driver would."""
    import ray

    key = boxed[0].hex()
    if key not in _held:
        _held.clear()
        _held[key] = ray.get(boxed[0])
    tokenizer = _held[key]
    overlength = new_overlength()
    documents: list[Document]
    if kind == "dpo":
        pairs = kept_pairs(records, tokenizer, dataset, overlength)
        documents = list(itertools.chain.from_iterable(pairs))
    else:
        documents = list(within_limit(records, fmt, tokenizer, dataset, overlength))
    return _compact(documents, overlength)


def _compact(documents: list[Document], overlength: dict[str, int]) -> Tokenised:
    lengths = np.fromiter((len(d.input_ids) for d in documents), np.int32, len(documents))
    total = int(lengths.sum())
    ids = np.fromiter(
        itertools.chain.from_iterable(d.input_ids for d in documents), np.int32, total
    )
    labels = np.fromiter(
        itertools.chain.from_iterable(d.labels for d in documents), np.int32, total
    )
    learned = labels == ids
    # A label is its token or IGNORE_INDEX; anything else would be lost by the mask.
    if not np.all(learned | (labels == IGNORE_INDEX)):
        raise RuntimeError("a label that is neither its token nor IGNORE_INDEX")
    return Tokenised(ids, learned, lengths, overlength)


def _documents(chunk: Tokenised) -> list[Document]:
    """The chunk's documents as the driver's path makes them: labels share the ids' int
    objects (and one IGNORE_INDEX), which halves their memory."""
    ids = chunk.input_ids.tolist()
    labels = [
        token if learned else IGNORE_INDEX
        for token, learned in zip(ids, chunk.learned.tolist(), strict=True)
    ]
    ends = itertools.accumulate(chunk.lengths.tolist())
    return [
        Document(ids[start:end], labels[start:end])
        for start, end in itertools.pairwise(itertools.chain([0], ends))
    ]


def _add(total: dict[str, int], counts: dict[str, int]) -> None:
    for key, value in counts.items():
        total[key] += value
