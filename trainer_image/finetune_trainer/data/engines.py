"""Where the per-record work of the data stage runs: in the driver, or on Ray Data.

Either way the pipeline asks for the sources one after another, in the order it was
given them, and gets every item of each as a `Cleaned`, in file order; it then makes the
global decisions itself (dedup, split, leakage, mix), so the result does not depend on
where or in how many pieces the cleaning ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from finetune_operator import api
from finetune_operator.errors import UserError

from finetune_trainer.data.clean import Cleaned, clean_item, make_redactor
from finetune_trainer.data.readers import SourceLineage, read_source

if TYPE_CHECKING:
    from finetune_trainer.data.pii import Redactor

WORKERS_ENV = "FINETUNE_DATA_WORKERS"  # unset: one per CPU of the Ray cluster; 0: the driver
DEFAULT_BLOCK_RECORDS = 64  # records per Ray Data block: small, since one costs ~1 s of NER


class Engine(Protocol):
    def cleaned(
        self, index: int, source: api.DataSource, lineage: SourceLineage
    ) -> Iterator[Cleaned]:
        """Every item of sources[index], cleaned, in order; fills in the source's lineage."""
        ...

    def close(self) -> None:
        """Stop whatever still runs (after a failure, the rest is not wanted)."""
        ...


class InDriver:
    """Everything in this process: no Ray needed (small data, tests, `FINETUNE_DATA_WORKERS=0`)."""

    def __init__(self, cleaning: api.CleaningSpec, base_dir: Path | None) -> None:
        self.cleaning, self.base_dir = cleaning, base_dir
        self._redactor: Redactor | None = None

    def cleaned(
        self, index: int, source: api.DataSource, lineage: SourceLineage
    ) -> Iterator[Cleaned]:
        if self._redactor is None:
            self._redactor = make_redactor(self.cleaning)
        items = read_source(source.source, lineage, split=source.split, base_dir=self.base_dir)
        for item in items:
            yield clean_item(item, source.format, self.cleaning, self._redactor)

    def close(self) -> None:
        pass


class Running:
    """`with Running(engine):` closes the engine however the block ends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Engine:
        return self.engine

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.engine.close()


def make_engine(
    sources: list[tuple[str, api.DataSource]],
    cleaning: api.CleaningSpec,
    base_dir: Path | None,
    *,
    workers: int | None,
    block_records: int = DEFAULT_BLOCK_RECORDS,
) -> Engine:
    """In the driver when workers is None; else Ray Data with that many cleaning actors."""
    if workers is None:
        return InDriver(cleaning, base_dir)
    from finetune_trainer.data.on_ray import OnRayData

    return OnRayData(sources, cleaning, base_dir, workers=workers, block_records=block_records)


def workers_from_env(*, redact: bool = True) -> int | None:
    """How many Ray Data workers clean the data: FINETUNE_DATA_WORKERS, or one per CPU of
    the Ray cluster (joined or started here); None means in the driver, without Ray.

    Unset and without redaction it is the driver: shipping each record to an actor and back
    costs more than checking and normalising it there (see bench/data_stage_scale.py)."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if not value and not redact:
        return None
    if value:
        try:
            wanted = int(value)
        except ValueError:
            raise UserError(f"{WORKERS_ENV}={value!r}: expected a whole number") from None
        if wanted < 0:
            raise UserError(f"{WORKERS_ENV}={value!r}: expected 0 or more")
        if wanted == 0:
            return None
    else:
        wanted = 0
    from finetune_trainer import cluster

    cluster.connect()
    _, cpus = cluster.available_resources()
    # Each worker holds one CPU; asking for more than the cluster has would wait forever.
    most = max(int(cpus), 1)
    return min(wanted, most) if wanted else most
