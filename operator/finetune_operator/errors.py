"""The one base class for "the job or its input is wrong" errors.

The command line prints a UserError as one line naming the field, file or line, with no
traceback; every other exception is a bug of ours or of a library and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: a field, a file, a data line, the machine's resources."""


# `finetune run` exits with this when it refuses the job's input (spec, data, model): the
# operator reads it back from KubeRay's message and does not retry what cannot succeed.
EXIT_BAD_INPUT = 2
