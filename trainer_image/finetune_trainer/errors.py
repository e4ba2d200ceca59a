"""Errors that mean "the job is wrong", which `finetune run` prints as one line, no traceback."""

from __future__ import annotations

from finetune_operator.validation import InvalidSpec

from finetune_trainer.data import DataError
from finetune_trainer.deepspeed_config import BatchSizeError
from finetune_trainer.model import ModelSourceError
from finetune_trainer.ray_train import MethodUnavailable
from finetune_trainer.rows import NotEnoughData

# The data stage reports unreadable or malformed input as ValueError / OSError subclasses.
USER_ERRORS: tuple[type[Exception], ...] = (
    InvalidSpec,
    BatchSizeError,
    ModelSourceError,
    MethodUnavailable,
    NotEnoughData,
    DataError,
    ValueError,
    OSError,
)
