"""A retry resumes from the newest checkpoint every rank finished, recorded by Ray or not."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs
import pytest
from finetune_trainer.resume_point import (
    MARKER_DIR,
    Marker,
    RunStorage,
    checkpoint_dir_name,
    files_of,
    marker_name,
    step_of,
    unrecorded_resume_step,
)

SHARDS = {
    "trainer_state.json": b'{"step": 0}',
    "engine/state/mp_rank_00_model_states.pt": b"m" * 300,
    "engine/state/zero_pp_rank_0_mp_rank_00_optim_states.pt": b"o" * 200,
    "engine/state/zero_pp_rank_1_mp_rank_00_optim_states.pt": b"p" * 200,
}
RANK_FILES = {
    0: ["trainer_state.json", "engine/state/mp_rank_00_model_states.pt",
        "engine/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"],
    1: ["engine/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"],
}  # fmt: skip


def save(run: Path, step: int, *, ranks: tuple[int, ...] = (0, 1), attempt: str = "a1") -> Path:
    """A checkpoint folder as two ranks' uploads leave it, each rank's marker written last."""
    folder = run / checkpoint_dir_name(step)
    for files in RANK_FILES.values():
        for name in files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(SHARDS[name])
    storage = RunStorage(pyarrow.fs.LocalFileSystem(), str(run))
    for rank in ranks:
        files = {name: len(SHARDS[name]) for name in RANK_FILES[rank]}
        marker = Marker(rank=rank, world=2, attempt=attempt, files=files)
        storage.write_marker(checkpoint_dir_name(step), marker)
    return folder


@pytest.fixture
def run(tmp_path: Path) -> Path:
    folder = tmp_path / "checkpoints" / "tiny-1234abcd"
    folder.mkdir(parents=True)
    return folder


def storage_of(run: Path) -> RunStorage:
    return RunStorage(pyarrow.fs.LocalFileSystem(), str(run))


def test_a_newer_complete_checkpoint_wins_over_the_recorded_one(run):
    save(run, 2)
    save(run, 3)
    assert unrecorded_resume_step(storage_of(run), recorded=2) == 3


def test_a_complete_checkpoint_is_found_when_ray_recorded_none(run):
    save(run, 3)
    assert unrecorded_resume_step(storage_of(run), recorded=None) == 3


def test_the_recorded_checkpoint_stays_when_it_is_the_newest(run):
    save(run, 2)
    save(run, 3)
    assert unrecorded_resume_step(storage_of(run), recorded=3) is None


def test_a_folder_missing_a_ranks_marker_does_not_count(run):
    save(run, 2)
    save(run, 3, ranks=(0,))  # rank 1 was killed before its upload finished
    assert unrecorded_resume_step(storage_of(run), recorded=2) is None
    assert storage_of(run).newest_complete() == 2


def test_a_truncated_shard_does_not_count(run):
    save(run, 2)
    folder = save(run, 3)
    shard = folder / "engine/state/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:50])
    assert unrecorded_resume_step(storage_of(run), recorded=2) is None


def test_a_partial_copy_missing_a_file_does_not_count(run):
    save(run, 2)
    folder = save(run, 3)
    (folder / "trainer_state.json").unlink()
    assert unrecorded_resume_step(storage_of(run), recorded=2) is None


def test_markers_of_two_attempts_do_not_make_a_folder_complete(run):
    """Rank 1 finished step 3 in one attempt, rank 0 in the next, whose rank 1 died
    mid-upload: the folder mixes attempts, and its shards may mix them too."""
    save(run, 2)
    save(run, 3, ranks=(1,), attempt="first")
    save(run, 3, ranks=(0,), attempt="second")
    assert unrecorded_resume_step(storage_of(run), recorded=2) is None


def test_a_half_written_marker_does_not_count(run):
    save(run, 2)
    folder = save(run, 3)
    (folder / MARKER_DIR / marker_name(1)).write_text('{"rank": 1, "wor')
    assert unrecorded_resume_step(storage_of(run), recorded=2) is None


def test_a_folder_without_markers_from_an_older_trainer_is_left_to_ray(run):
    save(run, 2, ranks=())
    assert unrecorded_resume_step(storage_of(run), recorded=None) is None


def test_the_newest_complete_is_found_past_a_newer_incomplete_one(run):
    save(run, 1)
    save(run, 2)
    save(run, 3, ranks=(1,))
    assert storage_of(run).checkpoint_steps() == [3, 2, 1]
    assert unrecorded_resume_step(storage_of(run), recorded=1) == 2


def test_an_empty_or_missing_run_folder_has_nothing(tmp_path):
    assert storage_of(tmp_path / "nothing-here").newest_complete() is None


def test_remove_deletes_one_checkpoint_folder(run):
    save(run, 2)
    save(run, 3)
    storage_of(run).remove(2)
    assert storage_of(run).checkpoint_steps() == [3]


def test_files_of_lists_what_a_rank_uploads(tmp_path):
    (tmp_path / "engine" / "state").mkdir(parents=True)
    (tmp_path / "engine" / "state" / "shard.pt").write_bytes(b"x" * 7)
    (tmp_path / "trainer_state.json").write_text("{}")
    assert files_of(tmp_path) == {"engine/state/shard.pt": 7, "trainer_state.json": 2}


@pytest.mark.parametrize(
    ("path", "step"),
    [
        ("bucket/out/checkpoints/run/checkpoint_step_00000012", 12),
        ("/data/run/checkpoint_step_00000000/", 0),
        ("/data/run/checkpoint_2024-01-01_00-00-00", None),
        ("/data/run/lineage.json", None),
    ],
)
def test_step_of_reads_only_our_checkpoint_folders(path, step):
    assert step_of(path) == step
