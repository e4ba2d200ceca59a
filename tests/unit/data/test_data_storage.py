"""Storage URIs: local paths, file://, pvc:// under the configurable root, s3:// parsing."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
from finetune_trainer import storage
from finetune_trainer.errors import LocationError


def test_relative_paths_resolve_against_the_base_dir(tmp_path):
    assert (
        storage.resolve_local("data/train.jsonl", base_dir=tmp_path)
        == tmp_path / "data/train.jsonl"
    )
    assert storage.resolve_local("/srv/data.jsonl", base_dir=tmp_path) == Path("/srv/data.jsonl")


def test_file_uri_is_a_local_path(tmp_path):
    assert storage.resolve_local(f"file://{tmp_path}/a.jsonl") == tmp_path / "a.jsonl"


def test_pvc_uri_maps_under_the_mount_root(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(tmp_path))
    assert storage.resolve_local("pvc://datasets/chat/train.jsonl") == (
        tmp_path / "datasets" / "chat" / "train.jsonl"
    )
    monkeypatch.delenv(storage.PVC_ROOT_ENV)
    assert storage.resolve_local("pvc://datasets/x") == Path("/mnt/pvc/datasets/x")


@pytest.mark.parametrize(
    ("uri", "scheme", "bucket", "path"),
    [
        ("s3://my-bucket/prefix/train.jsonl", "s3", "my-bucket", "prefix/train.jsonl"),
        ("s3://my-bucket", "s3", "my-bucket", ""),
        ("hf://org/dataset", "hf", "org/dataset", ""),
        ("hf://squad", "hf", "squad", ""),
        ("pvc://claim", "pvc", "claim", ""),
    ],
)
def test_remote_uris_parse(uri, scheme, bucket, path):
    location = storage.parse_uri(uri)
    assert (location.scheme, location.bucket, location.path) == (scheme, bucket, path)


@pytest.mark.parametrize("uri", ["s3://bucket/key", "hf://org/name"])
def test_remote_uris_are_not_local(uri):
    with pytest.raises(ValueError, match="not a local location"):
        storage.resolve_local(uri)


@pytest.mark.parametrize("uri", ["gs://bucket/x", "s3:///key", ""])
def test_bad_uris_are_refused_by_name(uri):
    with pytest.raises(ValueError):
        storage.parse_uri(uri)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("pvc://claim/a/../b/./c.jsonl", "b/c.jsonl"),
        ("pvc://claim//data///train.jsonl", "data/train.jsonl"),
        ("pvc://claim/a/..", ""),
    ],
)
def test_pvc_paths_are_normalised_inside_the_claim(uri, path):
    assert storage.parse_uri(uri).path == path


@pytest.mark.parametrize(
    "uri", ["pvc://claim/..", "pvc://claim/../..", "pvc://claim/a/../../other/x", "pvc://c/../c"]
)
def test_pvc_paths_that_leave_the_claim_are_refused(uri, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(tmp_path))
    with pytest.raises(LocationError, match="must stay inside its claim"):
        storage.resolve_local(uri)


def test_open_uri_reads_local_and_pvc(tmp_path, monkeypatch):
    monkeypatch.setenv(storage.PVC_ROOT_ENV, str(tmp_path))
    (tmp_path / "claim").mkdir()
    (tmp_path / "claim" / "f.txt").write_text("hello")
    with storage.open_uri("pvc://claim/f.txt", "r") as handle:
        assert handle.read() == "hello"
    with storage.open_uri("claim/f.txt", "r", base_dir=tmp_path) as handle:
        assert handle.read() == "hello"


def test_fetch_to_cache_copies_a_prefix(tmp_path, monkeypatch):
    # Stands in for the S3 transport only: fsspec's in-memory filesystem behind the same
    # fsspec interface, exercising our listing and atomic copy (s3fs itself is not run).
    memory = fsspec.filesystem("memory")
    memory.pipe("/bucket/models/tiny/config.json", b"{}")
    memory.pipe("/bucket/models/tiny/weights/part-1.bin", b"abc")
    monkeypatch.setattr(storage, "s3_filesystem", lambda: memory)
    local = storage.fetch_to_cache("s3://bucket/models/tiny", tmp_path)
    assert (local / "config.json").read_bytes() == b"{}"
    assert (local / "weights" / "part-1.bin").read_bytes() == b"abc"
    assert not list(tmp_path.rglob("*.partial"))
    assert (
        storage.fetch_to_cache("local/dir", tmp_path, base_dir=tmp_path) == tmp_path / "local/dir"
    )
