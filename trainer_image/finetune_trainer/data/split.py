"""Deterministic train/validation/test assignment from content and seed.

A record's split depends only on its normalised content and the seed: not on file
order, chunking, worker count or machine, so re-running a job (or resuming it on another
cluster) never moves a record between train and evaluation.
"""

from __future__ import annotations

import hashlib

from finetune_trainer.data.normalize import content_key

TRAIN, VALIDATION, TEST = "train", "validation", "test"


def unit_interval(text: str, seed: int) -> float:
    """A uniform-looking number in [0, 1) fixed by the content and the seed."""
    digest = hashlib.blake2b(
        content_key(text).encode("utf-8"), digest_size=8, key=str(seed).encode("ascii")
    ).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_of(text: str, seed: int, validation_fraction: float, test_fraction: float) -> str:
    """TRAIN, VALIDATION or TEST for a record with this content."""
    value = unit_interval(text, seed)
    if value < validation_fraction:
        return VALIDATION
    if value < validation_fraction + test_fraction:
        return TEST
    return TRAIN
