"""Hostile data files and model folders: each row is one bad input and the one-line outcome.

The rule for every row: nothing read is lost silently, no raw value reaches the console or
data_report.json, and no traceback: a bad record is counted (with file and line), a bad
file is one error naming it.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import json
import lzma
import re
import shutil

import fsspec
import pytest
import yaml
from finetune_operator import api
from finetune_operator.cli import main
from finetune_trainer.data import prepare_records, stream_prepared
from finetune_trainer.data.sinks import JsonlSink
from finetune_trainer.errors import DataError, ModelSourceError, StorageError
from finetune_trainer.model import load_base_model, load_tokenizer, resolve_model_dir

from tests.factories import MakeJob
from tests.records import arithmetic_records, chat

GOOD = arithmetic_records(20)
GOOD_BYTES = b"".join(json.dumps(r).encode() + b"\n" for r in GOOD)
BLOB = "x" * 200_000
EMAIL = "jane.doe@example.com"


def spec_for(source, fmt="messages"):
    dataset = {"train": {"source": source, "format": fmt}, "validationSplit": 0.0}
    return MakeJob.data_stage().spec(dataset=dataset).typed_spec()


def turns(role="user", content="What is 2 plus 2?"):
    return {"messages": [{"role": role, "content": content}, chat("", "4")["messages"][1]]}


# One bad line (written as bytes, line 2 of the file); the reason it is counted under.
BAD_LINES = {
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, r"^invalid JSON: nested too deeply"),
    "huge integer": (b'{"messages": ' + b"9" * 5000 + b"}", r"integer longer than \d+ digits"),
    "lone surrogate": (
        json.dumps(turns(content="bad \ud800 text")).encode(),
        r"^messages\[0\]\.content holds a lone surrogate",
    ),
    "invalid UTF-8": (b'{"messages": "\xff\xfe"}', r"^not valid UTF-8 \(byte 15\)$"),
    "NUL byte": (b'{"messages": "a\x00b"}', r"^invalid JSON: Invalid control character"),
    "not an object": (b"[1, 2]", r"^expected a JSON object, got list$"),
    "cut-off line": (b'{"messages": [{"role": "user", "con', r"^invalid JSON: .*\(column \d+\)$"),
}


@pytest.mark.parametrize("line, reason", BAD_LINES.values(), ids=BAD_LINES)
def test_a_pathological_line_is_counted_malformed_and_the_stage_goes_on(tmp_path, line, reason):
    first, rest = GOOD_BYTES.split(b"\n", 1)
    (tmp_path / "train.jsonl").write_bytes(first + b"\n" + line + b"\n" + rest)
    prepared = prepare_records(spec_for("train.jsonl"), base_dir=tmp_path)
    assert prepared.train == GOOD
    (entry,) = prepared.report["malformed"]["first"]
    assert entry["file"].endswith("train.jsonl") and entry["line"] == 2
    assert re.search(reason, entry["reason"])


# A bad value that must not come back: (record, what the reason says, what it must not hold).
ECHOES = {
    "200 KB role": (turns(role=BLOB), r"got 'x{40}'\.\.\. \(200000 characters\)", BLOB[:41]),
    "email as role": (turns(role=EMAIL), r"got '<EMAIL>'", EMAIL),
    "email in a long role": (turns(role=f"{EMAIL} {BLOB}"), r"'<EMAIL> x+'\.\.\. \(", EMAIL),
    "email as part type": (
        turns(content=[{"type": EMAIL, "text": "hi"}]),
        r"non-text part \(<EMAIL>\)",
        EMAIL,
    ),
    "blob as part type": (
        turns(content=[{"type": BLOB, "text": "hi"}]),
        r"non-text part \(x{40}\.\.\. \(200000 characters\)\)",
        BLOB[:41],
    ),
}


@pytest.mark.parametrize("record, says, hidden", ECHOES.values(), ids=ECHOES)
def test_malformed_reasons_never_echo_the_value(tmp_path, capsys, record, says, hidden):
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps(r) for r in [record, *GOOD]) + "\n", encoding="utf-8"
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(MakeJob.data_stage().obj()))
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    report = (tmp_path / "out" / "data_report.json").read_text()
    reason = json.loads(report)["malformed"]["first"][0]["reason"]
    assert re.search(says, reason) and len(reason) < 200
    out = capsys.readouterr().out
    assert hidden not in report and hidden not in out
    assert f"train.jsonl:1: {reason}" in out


# A folder holding good.jsonl and one more file: is that file read, or skipped and why?
FOLDER_FILES = {
    "A.JSONL": (GOOD_BYTES, None),
    "b.Json": (json.dumps(GOOD).encode(), None),
    "c.jsonl.GZ": (gzip.compress(GOOD_BYTES), None),
    "d.JSON.gz": (gzip.compress(json.dumps(GOOD).encode()), None),
    "e.jsonl.bz2": (bz2.compress(GOOD_BYTES), None),
    "f.jsonl.XZ": (lzma.compress(GOOD_BYTES), None),
    "g.jsonl.zst": (b"(\xb5/\xfd", r"^zstd-compressed, which is not read"),
    "h.zip": (b"PK\x03\x04", r"^an archive, which is not read"),
    "i.tar.gz": (gzip.compress(b"tar"), r"^an archive, which is not read"),
    "j.parquet.gz": (gzip.compress(b"PAR1"), r"^compressed Parquet, which is not read"),
    "notes.txt": (b"hello", r"^not a data file \(\.jsonl, \.json or \.parquet"),
    ".hidden.jsonl": (GOOD_BYTES, r"^hidden file$"),
    "._good.jsonl": (b"\x00\x05\x16\x07", r"^hidden file$"),
    ".ipynb_checkpoints/good-checkpoint.jsonl": (GOOD_BYTES, r"^in a hidden folder$"),
    "good.jsonl~": (GOOD_BYTES, r"^editor backup"),
    ".good.jsonl.swp": (b"b0VIM", r"^hidden file$"),
    "#good.jsonl#": (GOOD_BYTES, r"^editor backup"),
}


@pytest.mark.parametrize(
    "name, content, skipped", [(n, *v) for n, v in FOLDER_FILES.items()], ids=FOLDER_FILES
)
def test_every_file_of_a_folder_is_read_or_listed_as_skipped(tmp_path, name, content, skipped):
    folder = tmp_path / "data"
    folder.mkdir()
    others = arithmetic_records(5, start=100)
    (folder / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in others))
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    report = prepare_records(spec_for("data"), base_dir=tmp_path).report
    read = [f["path"].rsplit("/", 1)[1] for f in report["sources"][0]["files"]]
    if skipped is None:
        assert read == sorted([name, "good.jsonl"]) and report["records_read"] == 25
        assert report["skipped_count"] == 0 and report["skipped_files"] == []
    else:
        assert read == ["good.jsonl"] and report["records_read"] == 5
        (entry,) = report["skipped_files"]
        assert entry["file"] == str(folder / name) and report["skipped_count"] == 1
        assert re.search(skipped, entry["reason"])


def test_skipped_files_are_listed_on_the_console_first_few_then_a_count(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD))
    for index in range(8):
        (folder / f"part-{index}.jsonl.zst").write_bytes(b"(\xb5/\xfd")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(MakeJob.data_stage().train("data").obj()))
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    first = out.index("skipped 8 files in source folders (not read):")
    assert out[first + 1] == (
        f"  skipped {folder}/part-0.jsonl.zst: zstd-compressed, which is not read "
        "(decompress it, or recompress it with gzip)"
    )
    assert sum(line.startswith("  skipped ") for line in out) == 5
    assert "  ... and 3 more (see data_report.json)" in out
    report = json.loads((tmp_path / "out" / "data_report.json").read_text())
    assert report["skipped_count"] == 8 and len(report["skipped_files"]) == 8


def test_a_folder_of_only_unreadable_files_says_what_it_skipped(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl.zst").write_bytes(b"(\xb5/\xfd")
    (tmp_path / "data" / ".train.jsonl").write_text(json.dumps(GOOD[0]))
    with pytest.raises(DataError, match=r"data: folder .* holds no data files; skipped 2: "
                       r".*\.train\.jsonl: hidden file; .*train\.jsonl\.zst: zstd-compressed"):  # fmt: skip
        prepare_records(spec_for("data"), base_dir=tmp_path)


@pytest.mark.parametrize("name", ["train.zip", "train.jsonl.zst", "train.parquet.gz"])
def test_a_named_file_of_a_kind_we_cannot_read_is_one_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"PK\x03\x04 whatever")
    with pytest.raises(DataError, match=rf"^{re.escape(name)}: .*which is not read"):
        prepare_records(spec_for(name), base_dir=tmp_path)


def cut(data):
    return data[: len(data) // 2]


def corrupt(data):
    return data[:20] + bytes(b ^ 0xFF for b in data[20:60]) + data[60:]


MANY = b"".join(json.dumps(r).encode() + b"\n" for r in arithmetic_records(3000))
# A compressed file broken in a way the decompressor finds mid-stream: one error naming it.
BROKEN = {
    "gzip cut in half": ("train.jsonl.gz", cut(gzip.compress(MANY)), r"gzip data after \d+ rec"),
    "gzip corrupt": ("train.jsonl.gz", corrupt(gzip.compress(MANY)), r"gzip data"),
    "gzip header only": ("train.jsonl.gz", gzip.compress(MANY)[:12], r"gzip data \("),
    "bzip2 cut in half": ("train.jsonl.bz2", cut(bz2.compress(MANY)), r"bzip2 data \(Compr"),
    "xz cut in half": ("train.jsonl.xz", cut(lzma.compress(MANY)), r"xz data after \d+ rec"),
    "xz not xz at all": ("train.jsonl.xz", MANY[:500], r"xz data \(Input format not supp"),
    "json.gz cut": ("train.json.gz", cut(gzip.compress(json.dumps(GOOD * 50).encode())), "gzip"),
}


@pytest.mark.parametrize("name, data, problem", BROKEN.values(), ids=BROKEN)
def test_a_broken_compressed_file_is_one_error_naming_it(tmp_path, name, data, problem):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as raised:
        prepare_records(spec_for(name), base_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith(f"{tmp_path / name}: cannot read: truncated or corrupt ")
    assert re.search(problem, message) and message.endswith("fix or remove the file")


BOM = b"\xef\xbb\xbf"
# A byte-order mark from a Windows editor is no malformation; UTF-16 is said to be UTF-16.
BOMS = {
    "jsonl with a UTF-8 BOM": ("train.jsonl", BOM + GOOD_BYTES, None),
    "json with a UTF-8 BOM": ("train.json", BOM + json.dumps(GOOD).encode(), None),
    "jsonl.gz with a UTF-8 BOM": ("train.jsonl.gz", gzip.compress(BOM + GOOD_BYTES), None),
    "UTF-16 jsonl": ("train.jsonl", GOOD_BYTES.decode().encode("utf-16"), r"UTF-16 text"),
    "UTF-16 json": ("train.json", json.dumps(GOOD).encode("utf-16"), r"UTF-16 text"),
}


@pytest.mark.parametrize("name, data, error", BOMS.values(), ids=BOMS)
def test_a_byte_order_mark_is_not_malformation(tmp_path, name, data, error):
    (tmp_path / name).write_bytes(data)
    if error:
        with pytest.raises(DataError, match=rf"/{re.escape(name)}: {error}.*save it as UTF-8"):
            prepare_records(spec_for(name), base_dir=tmp_path)
        return
    prepared = prepare_records(spec_for(name), base_dir=tmp_path)
    assert prepared.train == GOOD and prepared.report["malformed"]["count"] == 0


# A JSON document is parsed whole, so a pathological one is one error naming the file.
BAD_DOCUMENTS = {
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, r"invalid JSON: nested too deeply"),
    "huge integer": (b'[{"messages": ' + b"9" * 5000 + b"}]", r"invalid JSON: an integer longer"),
    "invalid UTF-8": (b'[{"messages": "\xff"}]', r"not valid UTF-8 \(byte 16\)"),
    "syntax": (b'[{"messages": }]', r"line 1: invalid JSON: Expecting value"),
}


@pytest.mark.parametrize("data, error", BAD_DOCUMENTS.values(), ids=BAD_DOCUMENTS)
def test_a_pathological_json_document_is_one_error_naming_it(tmp_path, data, error):
    (tmp_path / "train.json").write_bytes(data)
    with pytest.raises(DataError, match=rf"/train\.json: {error}"):
        prepare_records(spec_for("train.json"), base_dir=tmp_path)


def test_a_file_name_that_is_not_utf8_is_read_and_printable(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    odd = folder / b"caf\xe9.jsonl".decode("utf-8", "surrogateescape")
    odd.write_bytes(GOOD_BYTES.replace(b"\n", b"\n[1]\n", 1))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(MakeJob.data_stage().train("data").obj()))
    assert main(["prepare", str(job), "--output", str(tmp_path / "out")]) == 0
    assert "caf\\udce9.jsonl:2: expected a JSON object" in capsys.readouterr().out


def test_no_space_left_while_writing_prepared_data_names_the_folder(tmp_path, monkeypatch):
    (tmp_path / "train.jsonl").write_bytes(GOOD_BYTES)

    def disk_full(self, split, record):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JsonlSink, "add", disk_full)
    out = tmp_path / "out"
    with pytest.raises(StorageError, match=rf"^{re.escape(str(out))}: No space left on device$"):
        stream_prepared(spec_for("train.jsonl"), out, base_dir=tmp_path)
    assert not list(out.glob("*.partial"))


@pytest.fixture
def broken_model(tmp_path, tiny_model_dir):
    """Factory: a copy of the tiny model with break_it(folder) applied."""

    def make(break_it):
        model = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model)
        break_it(model)
        return model

    return make


def no_tokenizer(model):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (model / name).unlink(missing_ok=True)


def weights_cut(model):
    weights = model / "model.safetensors"
    weights.write_bytes(cut(weights.read_bytes()))


def weights_garbage(model):
    (model / "model.safetensors").write_bytes(b"not safetensors at all")


def weights_header_cut(model):
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])


BROKEN_MODELS = {
    "no tokenizer": (no_tokenizer, r"{dir}: no tokenizer \(tokenizer\.json / tokenizer_config"),
    "weights cut in half": (weights_cut, r"{dir}/model\.safetensors: \d+ bytes where its header"),
    "weights garbage": (weights_garbage, r"{dir}/model\.safetensors: header length \d+ does"),
    "weights header cut": (weights_header_cut, r"{dir}/model\.safetensors: header length"),
}


@pytest.mark.parametrize("break_it, error", BROKEN_MODELS.values(), ids=BROKEN_MODELS)
def test_a_broken_model_folder_names_the_folder_and_file(broken_model, break_it, error):
    model = broken_model(break_it)
    expected = "^spec.model.source: " + error.format(dir=re.escape(str(model)))
    spec = api.ModelSpec(source=str(model))
    with pytest.raises(ModelSourceError, match=expected):
        resolve_model_dir(spec)
    with pytest.raises(ModelSourceError, match=expected):
        load_tokenizer(model, spec)
    with pytest.raises(ModelSourceError, match=expected):
        load_base_model(model, spec, dtype=None, quantize_4bit=False)


def test_a_missing_weights_file_names_the_folder(broken_model):
    model = broken_model(lambda folder: (folder / "model.safetensors").unlink())
    spec = api.ModelSpec(source=str(model))
    with pytest.raises(ModelSourceError, match=rf"^spec.model.source: {re.escape(str(model))}: "
                       r"cannot load the weights: .*no file named model\.safetensors"):  # fmt: skip
        load_base_model(model, spec, dtype=None, quantize_4bit=False)


def test_an_s3_prefix_reads_any_case_and_lists_what_it_skipped(monkeypatch):
    # fsspec's in-memory filesystem stands in for S3's transport; the listing is ours.
    from finetune_trainer import storage

    memory = fsspec.filesystem("memory")
    memory.pipe("/hostile-bucket/sets/A.JSONL.GZ", gzip.compress(GOOD_BYTES))
    memory.pipe("/hostile-bucket/sets/b.jsonl.zst", b"(\xb5/\xfd")
    memory.pipe("/hostile-bucket/sets/.hidden/c.jsonl", GOOD_BYTES)
    monkeypatch.setattr(storage, "s3_filesystem", lambda: memory)
    report = prepare_records(spec_for("s3://hostile-bucket/sets")).report
    assert report["records_read"] == 20
    assert [(f["file"], f["reason"][:15]) for f in report["skipped_files"]] == [
        ("s3://hostile-bucket/sets/.hidden/c.jsonl", "in a hidden fol"),
        ("s3://hostile-bucket/sets/b.jsonl.zst", "zstd-compressed"),
    ]
