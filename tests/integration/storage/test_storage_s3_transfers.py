"""Models fetched from s3:// into the cache, and output folders uploaded to s3://."""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune_trainer.storage import fetch_to_cache
from finetune_trainer.upload import upload_dir

from tests.records import QUICKSTART_DATA

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from finetune_trainer.tiny_model import write_tiny_model

    return write_tiny_model(
        tmp_path_factory.mktemp("s3-model") / "tiny", [QUICKSTART_DATA], vocab_size=300
    )


def put_tree(s3, local: Path, prefix: str) -> list[str]:
    """Upload every file under `local` to `prefix`; their relative names, sorted."""
    names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    for name in names:
        s3.put_file(str(local / name), f"{prefix}/{name}")
    return names


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def test_a_model_prefix_is_fetched_and_loads(s3, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s3.mkdir("models")
    put_tree(s3, tiny_model, "models/tiny")
    local = fetch_to_cache("s3://models/tiny", tmp_path / "cache")
    assert local == tmp_path / "cache" / "models" / "tiny"
    assert tree(local) == tree(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(local)
    assert model.config.hidden_size == 64
    assert AutoTokenizer.from_pretrained(local).chat_template


def test_a_second_fetch_uses_the_cache_and_picks_up_changed_objects(s3, tiny_model, tmp_path):
    s3.mkdir("models")
    put_tree(s3, tiny_model, "models/tiny")
    cache = tmp_path / "cache"
    local = fetch_to_cache("s3://models/tiny", cache)
    weights = next(local.glob("*.safetensors"))
    before = weights.stat()

    again = fetch_to_cache("s3://models/tiny", cache)
    assert again == local
    after = weights.stat()
    # Not downloaded again: a download writes a new file and renames it over the old one.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    s3.pipe("models/tiny/generation_config.json", b'{"max_new_tokens": 7}')
    fetch_to_cache("s3://models/tiny", cache)
    assert (local / "generation_config.json").read_bytes() == b'{"max_new_tokens": 7}'
    assert weights.stat().st_ino == before.st_ino


def test_a_single_object_is_fetched(s3, tmp_path):
    s3.mkdir("models")
    s3.pipe("models/notes/card.md", b"# a model card\n")
    local = fetch_to_cache("s3://models/notes/card.md", tmp_path / "cache")
    assert local.read_bytes() == b"# a model card\n"


def test_fetching_what_is_not_there_names_the_uri(s3, tmp_path, monkeypatch):
    s3.mkdir("models")
    with pytest.raises(FileNotFoundError, match=r"s3://models/absent: no such object or prefix"):
        fetch_to_cache("s3://models/absent", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"s3://no-bucket/tiny: no such object or prefix"):
        fetch_to_cache("s3://no-bucket/tiny", tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    type(s3).clear_instance_cache()
    with pytest.raises(PermissionError, match=r"s3://models/tiny: no S3 credentials"):
        fetch_to_cache("s3://models/tiny", tmp_path)


def test_run_reports_a_missing_s3_model_in_one_line(s3, tmp_path, capsys):
    from finetune_trainer.run import EXIT_BAD_INPUT, run_command

    from tests.factories import MakeJob, write_job
    from tests.records import write_chat_data

    s3.mkdir("models")
    write_chat_data(tmp_path / "train.jsonl", 40)
    manifest = MakeJob.trainer().spec(model={"source": "s3://models/absent"}).obj()
    assert run_command(write_job(tmp_path, manifest), output=None, workers=1) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "s3://models/absent" in err and "Traceback" not in err


def test_upload_dir_puts_the_same_files_under_the_prefix(s3, tmp_path):
    local = tmp_path / "run"
    (local / "adapter").mkdir(parents=True)
    (local / "metrics.json").write_text('{"eval_loss": 1.5}\n')
    (local / "adapter" / "adapter_config.json").write_text('{"r": 8}\n')
    (local / "adapter" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    s3.mkdir("out")
    upload_dir(local, "s3://out/prefix/")
    keys = sorted(s3.find("out"))
    assert keys == ["out/prefix/adapter/adapter_config.json",
                    "out/prefix/adapter/adapter_model.safetensors",
                    "out/prefix/metrics.json"]  # fmt: skip
    for name, data in tree(local).items():
        assert s3.cat_file(f"out/prefix/{name}") == data


def test_upload_without_credentials_names_the_destination(s3, tmp_path, monkeypatch):
    (tmp_path / "metrics.json").write_text("{}\n")
    # A Secret that holds only one of the two keys.
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    type(s3).clear_instance_cache()
    with pytest.raises(OSError, match=r"s3://out/run2: .*missing: AWS_SECRET_ACCESS_KEY"):
        upload_dir(tmp_path, "s3://out/run2")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    type(s3).clear_instance_cache()
    with pytest.raises(PermissionError, match=r"s3://out/run2: no S3 credentials"):
        upload_dir(tmp_path, "s3://out/run2")
