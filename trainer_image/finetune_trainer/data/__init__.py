"""The data stage: read, clean, dedup, redact, split, check leakage, tokenise and pack."""

from typing import Any

from finetune_trainer.data.packing import build_rows, token_stats
from finetune_trainer.data.pipeline import (
    PreparedData,
    prepare_records,
    stream_prepared,
    write_prepared,
    write_report,
)

__all__ = [
    "PreparedData",
    "build_rows",
    "collate_rows",
    "prepare_records",
    "stream_prepared",
    "token_stats",
    "write_prepared",
    "write_report",
]


def __getattr__(name: str) -> Any:
    # collate_rows needs torch; `finetune prepare` does not, so torch loads only on use.
    if name == "collate_rows":
        from finetune_trainer.data.collate import collate_rows

        return collate_rows
    raise AttributeError(name)
