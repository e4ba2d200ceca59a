"""Duplicate removal on normalised content: exact (hash set) or near (MinHash LSH).

Memory per kept record is fixed: a 16-byte digest for exact dedup; for near dedup a
MinHash signature of NUM_PERM integers inside the LSH index (about 1 KiB per record),
which is the price of finding near copies in one streaming pass.
"""

from __future__ import annotations

from typing import Any, Protocol

from finetune_trainer.data.normalize import content_hash, content_key

NUM_PERM = 64
SHINGLE_WORDS = 3


class Deduplicator(Protocol):
    def is_duplicate(self, text: str) -> bool:
        """True when text repeats one seen before; otherwise remembers it."""
        ...


class NoDedup:
    def is_duplicate(self, text: str) -> bool:
        return False


class ExactDedup:
    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def is_duplicate(self, text: str) -> bool:
        digest = content_hash(text)
        if digest in self._seen:
            return True
        self._seen.add(digest)
        return False


class NearDedup:
    """Records whose word-shingle Jaccard similarity with a kept record exceeds threshold."""

    def __init__(self, threshold: float, *, num_perm: int = NUM_PERM) -> None:
        from datasketch import MinHashLSH

        self._num_perm = num_perm
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._exact = ExactDedup()  # exact copies are caught cheaply and for certain
        self._count = 0

    def is_duplicate(self, text: str) -> bool:
        if self._exact.is_duplicate(text):
            return True
        signature = self._signature(text)
        if self._lsh.query(signature):
            return True
        self._lsh.insert(str(self._count), signature)
        self._count += 1
        return False

    def _signature(self, text: str) -> Any:  # a datasketch.MinHash (datasketch has no types)
        from datasketch import MinHash

        words = content_key(text).split(" ")
        span = min(SHINGLE_WORDS, len(words))
        shingles = {" ".join(words[i : i + span]) for i in range(len(words) - span + 1)}
        signature = MinHash(num_perm=self._num_perm, seed=1)
        signature.update_batch([s.encode("utf-8") for s in shingles])
        return signature


def make_deduplicator(mode: str, threshold: float) -> Deduplicator:
    if mode == "exact":
        return ExactDedup()
    if mode == "near":
        return NearDedup(threshold)
    return NoDedup()
