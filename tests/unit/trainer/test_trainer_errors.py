"""Which errors `finetune run` prints as one line (ours, UserError) and which keep a traceback."""

from __future__ import annotations

import errno
import inspect
from pathlib import Path

import pytest
from finetune_operator.errors import UserError
from finetune_trainer import errors, storage
from finetune_trainer.run import run_command

from tests.factories import MakeJob, write_job


def test_every_error_of_ours_is_a_user_error_and_nothing_else_is_caught():
    classes = inspect.getmembers(errors, inspect.isclass)
    ours = [cls for _, cls in classes if cls.__module__ == errors.__name__]
    assert len(ours) >= 5 and all(issubclass(cls, UserError) for cls in ours)
    builtins = (ValueError, OSError, KeyError, ModuleNotFoundError)
    assert not any(issubclass(builtin, UserError) for builtin in builtins)


@pytest.mark.parametrize("bug", [ValueError("a bug"), KeyError("a bug"), OSError("a bug")])
def test_a_bug_on_the_driver_keeps_its_traceback(job_dir, monkeypatch, capsys, bug):
    import finetune_trainer.data

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(finetune_trainer.data, "prepare_records", broken)
    with pytest.raises(type(bug)):
        run_command(write_job(job_dir, MakeJob.trainer().obj()), output=None, workers=1)
    assert "finetune run:" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (PermissionError(errno.EACCES, "Permission denied", "/out/train.jsonl.partial"),
         errors.StorageAccessDenied),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/x"),
         errors.StorageNotFound),
        (OSError(errno.ENOSPC, "No space left on device"), errors.StorageError),
    ],
)  # fmt: skip
def test_local_file_errors_name_the_file(raised, expected):
    with pytest.raises(expected) as caught, storage.local_errors(Path("/out")):
        raise raised
    where = raised.filename or "/out"
    assert str(caught.value) == f"{where}: {raised.strerror}"
    assert isinstance(caught.value, UserError) and isinstance(caught.value, type(raised))


def test_s3_errors_name_the_uri_once():
    denied = r"^s3://b/k: \[Errno 13\] Access Denied$"
    with pytest.raises(errors.StorageAccessDenied, match=denied), storage.s3_errors("s3://b/k"):
        raise PermissionError(errno.EACCES, "Access Denied")
    missing = r"^s3://b/k: no such object$"
    with pytest.raises(errors.StorageNotFound, match=missing), storage.s3_errors("s3://b/k"):
        raise errors.StorageNotFound("s3://b/k: no such object")
