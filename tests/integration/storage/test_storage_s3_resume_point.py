"""On S3, through the pyarrow filesystem Ray Train persists with, a retry finds the newest
checkpoint every rank finished, and never one whose upload stopped part way."""

from __future__ import annotations

import pyarrow.fs
import pytest
from finetune_trainer.resume_point import (
    Marker,
    RunStorage,
    checkpoint_dir_name,
    unrecorded_resume_step,
)

pytestmark = [pytest.mark.integration]

RUN = "bucket/out/checkpoints/tiny-1234abcd"
SHARDS = {0: {"trainer_state.json": b"{}", "engine/state/rank0.pt": b"a" * 64},
          1: {"engine/state/rank1.pt": b"b" * 64}}  # fmt: skip


@pytest.fixture
def run(s3, moto_endpoint) -> RunStorage:
    s3.mkdir("bucket")
    # As ray_train.checkpoint_storage builds it: credentials from the AWS_* environment.
    return RunStorage(pyarrow.fs.S3FileSystem(endpoint_override=moto_endpoint), RUN)


def upload(s3, run: RunStorage, step: int, *, ranks: tuple[int, ...] = (0, 1)) -> None:
    """Both ranks' shards, then the markers of the ranks whose upload finished."""
    folder = f"{RUN}/{checkpoint_dir_name(step)}"
    for files in SHARDS.values():
        for name, content in files.items():
            s3.pipe(f"{folder}/{name}", content)
    for rank in ranks:
        sizes = {name: len(content) for name, content in SHARDS[rank].items()}
        run.write_marker(checkpoint_dir_name(step), Marker(rank, 2, "attempt-1", sizes))


def test_the_newest_complete_checkpoint_on_s3_wins(s3, run):
    upload(s3, run, 2)
    upload(s3, run, 3)
    assert unrecorded_resume_step(run, recorded=2) == 3


def test_an_unfinished_upload_on_s3_is_passed_over(s3, run):
    upload(s3, run, 2)
    upload(s3, run, 3)
    s3.pipe(f"{RUN}/{checkpoint_dir_name(3)}/engine/state/rank1.pt", b"b" * 10)  # cut short
    upload(s3, run, 4, ranks=(0,))
    assert run.checkpoint_steps() == [4, 3, 2]
    assert unrecorded_resume_step(run, recorded=2) is None
    run.remove(2)
    assert run.checkpoint_steps() == [4, 3]
