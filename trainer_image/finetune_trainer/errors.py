"""The trainer's errors that mean "the job or its input is wrong", each a UserError.

`finetune run` and `finetune prepare` print a UserError as one line naming the field, file
or line; anything else is a bug of ours or of a library and keeps its traceback. The
storage errors stay OSErrors (a bad location a ValueError) for callers that handle those.
"""

from __future__ import annotations

from finetune_operator.errors import UserError


class DataError(UserError):
    """The data stage cannot go on; the message names the file or field."""


class BatchSizeError(UserError):
    """The global batch cannot be split evenly over the ranks; the message names the field."""


class ModelSourceError(UserError):
    """The model or its tokenizer cannot be found or loaded; the message names the field."""


class NotEnoughData(UserError):
    """Fewer training rows than one global batch."""


class MethodUnavailable(UserError):
    """The method needs hardware or a package this run lacks; raised before any work starts."""


class LocationError(UserError, ValueError):
    """A source or destination URI that names no usable location (scheme, bucket, kind)."""


class StorageError(UserError, OSError):
    """A file, object or folder cannot be read or written; the message names it."""


class StorageNotFound(StorageError, FileNotFoundError):
    """No such file, object, prefix or bucket."""


class StorageAccessDenied(StorageError, PermissionError):
    """No credentials, or they do not allow the operation."""
