"""Hostile manifests: each is read as kubectl reads it and gets one line naming the field,
line or file; none costs a traceback, a hang or unbounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_operator import crd, kubeyaml
from finetune_operator.validation import load_job_file, validate_file, validate_object

from tests.factories import MakeJob

HEADER = """\
apiVersion: finetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: demo, namespace: default}
spec:
  model: {source: "hf://meta-llama/Llama-3.1-8B"}
  output: {destination: "s3://out/demo"}
"""
DATASET = '  dataset: {train: {source: "s3://data/train.jsonl"}}\n'


def job_text(extra: str, dataset: str = DATASET) -> str:
    return HEADER + dataset + extra


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


MERGED_DATA = """\
  dataset:
    train: &data {source: "s3://data/train.jsonl", format: alpaca}
    validation:
      <<: *data
      source: "s3://data/validation.jsonl"
"""

# (id, spec lines added to a valid job, (attribute path of the parsed spec, value kubectl sends))
ACCEPTED = [
    ("exponent without a dot", "  hyperparameters: {learningRate: 2e-4}\n", ("hyperparameters.learning_rate", 2e-4)),
    ("capital exponent", "  hyperparameters: {learningRate: 1E-3}\n", ("hyperparameters.learning_rate", 1e-3)),
    ("leading dot", "  hyperparameters: {warmupRatio: .5}\n", ("hyperparameters.warmup_ratio", 0.5)),
    ("integral float for an integer", "  hyperparameters: {maxSteps: 1e3}\n", ("hyperparameters.max_steps", 1000)),
    ("underscores in an integer", "  hyperparameters: {maxSteps: 1_000}\n", ("hyperparameters.max_steps", 1000)),
    ("hexadecimal", "  hyperparameters: {maxSteps: 0x10}\n", ("hyperparameters.max_steps", 16)),
    ("Go octal", "  hyperparameters: {maxSteps: 0o17}\n", ("hyperparameters.max_steps", 15)),
    ("YAML 1.1 off", "  hyperparameters: {gradientCheckpointing: off}\n", ("hyperparameters.gradient_checkpointing", False)),
    ("go-yaml's n", "  runPolicy: {suspend: y}\n", ("run_policy.suspend", True)),
    ("quoted stays a string", '  runPolicy: {queueName: "1e3"}\n', ("run_policy.queue_name", "1e3")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"), [row[1:] for row in ACCEPTED], ids=[row[0] for row in ACCEPTED]
)
def test_kubectl_readable_yaml_is_accepted(tmp_path, extra, expected) -> None:
    spec = load_job_file(write(tmp_path, job_text(extra))).spec
    attribute, value = expected
    for part in attribute.split("."):
        spec = getattr(spec, part)
    assert spec == value and type(spec) is type(value)


def test_merge_keys_merge_and_explicit_keys_win(tmp_path) -> None:
    dataset = load_job_file(write(tmp_path, job_text("", MERGED_DATA))).spec.dataset
    assert dataset.validation is not None
    assert dataset.validation.source == "s3://data/validation.jsonl"
    assert dataset.validation.format == "alpaca"


# (id, whole file text, the one line expected after `FILE: `)
REFUSED = [
    ("duplicate key", job_text("  runPolicy:\n    suspend: true\n    suspend: false\n"), "line 10, column 5: invalid YAML: duplicate key 'suspend'"),
    ("duplicate beside a merge", job_text("", MERGED_DATA + "      format: text\n      format: text\n"), "line 13, column 7: invalid YAML: duplicate key 'format'"),
    ("a boolean where a string goes", job_text("  dataset: {train: {source: s3://data/t.jsonl, split: on}}\n", dataset=""), "spec.dataset.train.split: input should be a valid string, got True"),
    ("self-referring alias", job_text("  resources: &r {tolerations: [*r]}\n"), "line 8, column 14: an alias refers to itself"),
    ("alias bomb", "a: &a [1,2,3,4,5,6,7,8,9,10]\n" + "".join(f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef", strict=True)), "more than 200000 values, counting those aliases repeat"),
    ("deep nesting", "spec: " + "[" * 5000 + "]" * 5000 + "\n", "line 1, column 106: invalid YAML: nested deeper than 100 levels"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"), [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED]
)
def test_hostile_yaml_gets_one_line(tmp_path, text, expected) -> None:
    path = write(tmp_path, text)
    lines = validate_file(path)
    assert lines == [f"{path}: {expected}"] or (len(lines) == 1 and expected in lines[0]), lines


def run_validate(path: Path | str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "finetune_operator.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result.returncode, result.stdout + result.stderr


def test_an_endless_file_is_read_only_up_to_the_bound() -> None:
    code, output = run_validate("/dev/zero")
    assert code == 1
    assert (
        output
        == f"/dev/zero: larger than {kubeyaml.MAX_FILE_BYTES} bytes: not a manifest kubectl could apply\n"
    )


def test_a_file_over_the_bound_is_refused(tmp_path) -> None:
    path = write(tmp_path, job_text("# " + "x" * kubeyaml.MAX_FILE_BYTES + "\n"))
    assert validate_file(path) == [
        f"{path}: larger than {kubeyaml.MAX_FILE_BYTES} bytes: not a manifest kubectl could apply"
    ]


def test_a_directory_gets_one_line(tmp_path) -> None:
    code, output = run_validate(tmp_path)
    assert (code, output) == (1, f"{tmp_path}: is a directory, not a manifest file\n")


def test_a_fifo_nobody_writes_to_does_not_hang(tmp_path) -> None:
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    code, output = run_validate(fifo)
    assert (code, output) == (1, f"{fifo}: no FineTuneJob in the file (it is empty)\n")


def test_a_pipe_is_read(tmp_path) -> None:
    """`finetune validate <(kustomize build)`: a pipe with a writer is read to its end."""
    read_end, write_end = os.pipe()
    os.write(write_end, job_text("").encode())
    os.close(write_end)
    try:
        assert validate_file(Path(f"/dev/fd/{read_end}")) == []
    finally:
        os.close(read_end)


INT64_MAX = 2**63 - 1

# (id, spec lines added to a valid job, the one line expected after `FILE: `)
OUT_OF_RANGE = [
    ("maxSteps past int64", f"  hyperparameters: {{maxSteps: {2**64}}}\n", f"spec.hyperparameters.maxSteps: {2**64} is greater than the maximum of {INT64_MAX}"),
    ("maxSteps far past int64", f"  hyperparameters: {{maxSteps: {10**30}}}\n", f"spec.hyperparameters.maxSteps: {10**30} is greater than the maximum of {INT64_MAX}"),
    ("maxSteps as a huge float", "  hyperparameters: {maxSteps: 1e30}\n", "spec.hyperparameters.maxSteps: unable to parse input string as an integer, exceeded maximum size, got 1e+30"),
    ("everySteps past int64", f"  checkpointing: {{everySteps: {2**63}}}\n", f"spec.checkpointing.everySteps: {2**63} is greater than the maximum of {INT64_MAX}"),
    ("tolerationSeconds past int64", f"  resources: {{tolerations: [{{operator: Exists, tolerationSeconds: {2**63}}}]}}\n", f"spec.resources.tolerations[0].tolerationSeconds: {2**63} is greater than the maximum of {INT64_MAX}"),
    ("ttl past int64", f"  runPolicy: {{ttlSecondsAfterFinished: {2**70}}}\n", f"spec.runPolicy.ttlSecondsAfterFinished: {2**70} is greater than the maximum of {INT64_MAX}"),
    ("seed past 32 bits", f"  hyperparameters: {{seed: {2**32}}}\n", "spec.hyperparameters.seed: input should be less than or equal to 4294967295, got 4294967296"),
    ("seed past int64", f"  hyperparameters: {{seed: {2**64}}}\n", f"spec.hyperparameters.seed: input should be less than or equal to 4294967295, got {2**64}"),
    ("deadline past the RayJob's int32", f"  runPolicy: {{activeDeadlineSeconds: {2**31}}}\n", "spec.runPolicy.activeDeadlineSeconds: input should be less than or equal to 2147483647, got 2147483648"),
    ("NaN learning rate", "  hyperparameters: {learningRate: .nan}\n", "spec.hyperparameters.learningRate: input should be a finite number, got nan"),
    ("infinite clipping norm", "  hyperparameters: {maxGradNorm: .inf}\n", "spec.hyperparameters.maxGradNorm: input should be a finite number, got inf"),
    ("infinite lora alpha", "  method: {lora: {alpha: .Inf}}\n", "spec.method.lora.alpha: input should be a finite number, got inf"),
    ("NaN integer", "  hyperparameters: {maxSteps: .NaN}\n", "spec.hyperparameters.maxSteps: input should be a finite number, got nan"),
    ("negative infinite delta", "  evaluation: {earlyStopping: {minDelta: -.inf}}\n", "spec.evaluation.earlyStopping.minDelta: input should be a finite number, got -inf"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "expected"), [row[1:] for row in OUT_OF_RANGE], ids=[row[0] for row in OUT_OF_RANGE]
)
def test_numbers_outside_what_kubernetes_stores_name_the_field(tmp_path, extra, expected) -> None:
    path = write(tmp_path, job_text(extra))
    assert validate_file(path) == [f"{path}: {expected}"]


def test_every_integer_in_the_crd_is_bounded_to_int64() -> None:
    def integers(node: dict, path: str = "") -> list[tuple[str, dict]]:
        found = [(path, node)] if node.get("type") == "integer" else []
        for name, child in node.get("properties", {}).items():
            found += integers(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                found += integers(node[key], f"{path}[]")
        return found

    fields = integers(crd.openapi_schema())
    assert len(fields) > 20
    for path, node in fields:
        assert node["format"] == "int64", path
        assert -(2**63) <= node["minimum"] <= node["maximum"] <= INT64_MAX, path


def test_a_stored_object_past_int64_is_a_problem_not_a_traceback() -> None:
    """The transition rules read the stored object, which the schema layer never checks."""
    job = MakeJob().obj()
    old = MakeJob().spec(hyperparameters={"maxSteps": 2**64}).obj()
    old["status"] = {"phase": "Running"}
    problems = validate_object(job, old)
    assert [str(p) for p in problems] == [
        "spec.hyperparameters.maxSteps: an integer past int64, which CEL cannot represent "
        "(in the stored object)"
    ]
