"""Leakage removal: evaluation records whose content or prompt also occurs in train.

A validation answer the model saw in training, or the same question with a reworded
answer, makes validation loss look better than the model is. Train side keeps two
16-byte digests per record; nothing else.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats import content_text, prompt_text
from finetune_trainer.data.normalize import content_hash


class LeakageIndex:
    def __init__(self) -> None:
        self._contents: set[bytes] = set()
        self._prompts: set[bytes] = set()

    def add_train(self, record: dict[str, Any], fmt: str) -> None:
        self._contents.add(content_hash(content_text(record, fmt)))
        prompt = prompt_text(record, fmt)
        if prompt:
            self._prompts.add(content_hash(prompt))

    def leaks(self, record: dict[str, Any], fmt: str) -> bool:
        """True when the record's content, or its non-empty prompt, occurs in train."""
        if content_hash(content_text(record, fmt)) in self._contents:
            return True
        prompt = prompt_text(record, fmt)
        if not prompt:
            return False
        return content_hash(prompt) in self._prompts
