"""Validate FineTuneJob manifests offline, as the API server and the operator would.

Four layers, each reporting `path: reason` problems:
1. the pydantic models (types, ranges, enums, unknown fields),
2. the generated CRD's own schema via jsonschema (what admission checks; also proves
   the CRD and the models agree),
3. the CRD's CEL rules via cel-python, on the object with defaults applied,
4. static checks (static_checks.py) of what the trainer would refuse after Ray starts.
The operator uses `parse_job`, so a spec `finetune validate` accepts is one it accepts.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pydantic
from celpy import CELEvalError, json_to_cel  # type: ignore[attr-defined]
from pydantic import BaseModel

from finetune_operator import api, crd, kube_values, kubeyaml
from finetune_operator.errors import UserError

PATTERN_HINTS = {
    api.SOURCE_PATTERN: "must be hf://org/name, s3://bucket/prefix, pvc://claim/path, "
    "file://path or a path",
    api.DESTINATION_PATTERN: "must be s3://bucket/prefix, pvc://claim/path, file://path or a "
    "path (hf:// is read-only)",
    api.DNS_1123_SUBDOMAIN: "must be a Kubernetes object name (lower-case letters, digits, "
    "'-' and '.')",
    **kube_values.HINTS,
}


@dataclass(frozen=True)
class Problem:
    path: str  # e.g. "spec.dataset.train.format"; "" for the document as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class InvalidSpec(UserError):
    """A manifest that is not a valid FineTuneJob; `problems` name each field."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# ---------------------------------------------------------------------------- entry points


def parse_job(obj: Any, old: Any = None) -> api.FineTuneJob:
    """The typed job, or InvalidSpec listing every problem the layers find.

    `old` (the stored object) enables the CEL transition rules.
    """
    if not isinstance(obj, dict):
        raise InvalidSpec(
            [Problem("", f"expected a FineTuneJob object (a mapping), got {_kind_of(obj)}")]
        )
    problems = _header_problems(obj)
    if problems:
        raise InvalidSpec(problems)
    job, problems = _model_layer(obj)
    seen = {p.path for p in problems}
    problems += [p for p in _schema_problems(obj) if p.path not in seen]
    if problems or job is None:
        raise InvalidSpec(problems)
    problems = cel_problems(_as_admitted(job), old)
    seen = {p.path for p in problems}
    problems += [p for p in _static_problems(job) if p.path not in seen]
    if problems:
        raise InvalidSpec(problems)
    return job


def _static_problems(job: api.FineTuneJob) -> list[Problem]:
    """Layer 4: what the spec alone shows the trainer would refuse once its cluster is up."""
    from finetune_operator.static_checks import static_problems  # it imports Problem from here

    return static_problems(job.spec)


def validate_object(obj: Any, old: Any = None) -> list[Problem]:
    """Every problem with one manifest; `old` (the stored object) enables transition rules."""
    try:
        parse_job(obj, old)
    except InvalidSpec as error:
        return error.problems
    return []


def validate_file(path: Path) -> list[str]:
    """`FILE: spec.path: reason` lines for every problem in a YAML file; empty when valid."""
    try:
        _load_jobs(path)
    except InvalidSpec as error:
        return [str(problem) for problem in error.problems]
    return []


def load_job_file(path: Path) -> api.FineTuneJob:
    """The one FineTuneJob in a YAML file (for `finetune run` / `prepare` / `render`)."""
    jobs = _load_jobs(path)
    if len(jobs) != 1:
        raise InvalidSpec([Problem("", f"{path}: expected one FineTuneJob, found {len(jobs)}")])
    return jobs[0]


def _load_jobs(path: Path) -> list[api.FineTuneJob]:
    """Every job in a YAML file, read and validated once; InvalidSpec with `FILE: ...` lines."""
    try:
        documents = list(kubeyaml.load_documents(kubeyaml.read_manifest_text(path)))
    except kubeyaml.ManifestFileError as error:
        raise _file_problem(path, str(error)) from None
    if not documents:
        raise _file_problem(path, "no FineTuneJob in the file (it is empty)")
    jobs, lines = [], []
    for index, document in enumerate(documents, start=1):
        suffix = f" (document {index})" if len(documents) > 1 else ""
        try:
            jobs.append(parse_job(document))
        except InvalidSpec as error:
            lines += [Problem("", f"{path}: {problem}{suffix}") for problem in error.problems]
    if lines:
        raise InvalidSpec(lines)
    return jobs


def _file_problem(path: Path, message: str) -> InvalidSpec:
    return InvalidSpec([Problem("", f"{path}: {message}")])


# ---------------------------------------------------------------------------- layer 1: models


def _header_problems(obj: dict[str, Any]) -> list[Problem]:
    problems = []
    if obj.get("apiVersion") != api.API_VERSION:
        problems.append(
            Problem("apiVersion", f"must be {api.API_VERSION}, got {obj.get('apiVersion')!r}")
        )
    if obj.get("kind") != api.KIND:
        problems.append(Problem("kind", f"must be {api.KIND}, got {obj.get('kind')!r}"))
    return problems


def _model_layer(obj: dict[str, Any]) -> tuple[api.FineTuneJob | None, list[Problem]]:
    """The typed job when the models accept `obj`, else the problems they name."""
    try:
        return api.FineTuneJob.model_validate(obj), []
    except pydantic.ValidationError as error:
        return None, [_describe_pydantic_error(e) for e in error.errors()]


def _describe_pydantic_error(error: Any) -> Problem:
    loc = tuple(error["loc"])
    path = format_path(loc)
    kind = error["type"]
    if kind == "missing":
        return Problem(path, "required field is missing")
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = f"; allowed here: {', '.join(allowed)}" if allowed else ""
        return Problem(path, f"unknown field{hint}")
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(error["ctx"]["pattern"], "has the wrong form")
        return Problem(path, f"{hint}, got {error['input']!r}")
    message = error["msg"][0].lower() + error["msg"][1:]
    return Problem(path, f"{message}, got {error['input']!r}")


def format_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Wire names of the fields the model at `loc` accepts (for 'unknown field' hints)."""
    model: type[BaseModel] | None = api.FineTuneJob
    for part in loc:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        field = next(
            (f for name, f in model.model_fields.items() if (f.alias or name) == part), None
        )
        model = _model_in(field.annotation) if field else None
    if model is None:
        return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside `T`, `T | None`, `list[T]` or `dict[str, T]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for argument in typing.get_args(annotation):
            found = _model_in(argument)
            if found:
                return found
    return None


# ---------------------------------------------------------------------------- layer 2: CRD schema


@functools.cache
def _crd_schema() -> dict[str, Any]:
    """The CRD's schema, built once: generating it is most of a parse's cost. Read-only."""
    return crd.openapi_schema()


@functools.cache
def _admission_validator() -> jsonschema.Draft4Validator:
    """The CRD schema as admission applies it, with kubectl's strict field validation."""
    return jsonschema.Draft4Validator(_strict(_crd_schema()))


def _strict(node: dict[str, Any]) -> dict[str, Any]:
    node = {k: v for k, v in node.items() if not k.startswith("x-kubernetes")}
    if node.pop("nullable", False):
        node["type"] = [node["type"], "null"]
        if "enum" in node:
            node["enum"] = [*node["enum"], None]
    if "properties" in node:
        node["properties"] = {k: _strict(v) for k, v in node["properties"].items()}
        if node["properties"] and set(node["properties"]) != {"metadata"}:
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _strict(node["additionalProperties"])
    if "items" in node:
        node["items"] = _strict(node["items"])
    return node


def _schema_problems(obj: dict[str, Any]) -> list[Problem]:
    problems = []
    for error in _admission_validator().iter_errors(obj):
        path = format_path(tuple(error.absolute_path))
        if error.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", error.message)
            for name in extra or ["?"]:
                problems.append(Problem(f"{path}.{name}" if path else name, "unknown field"))
            continue
        if error.validator == "required":
            missing = re.match(r"'([^']+)'", error.message)
            name = missing.group(1) if missing else "?"
            problems.append(
                Problem(f"{path}.{name}" if path else name, "required field is missing")
            )
            continue
        problems.append(Problem(path, error.message))
    return problems


# ---------------------------------------------------------------------------- layer 3: CEL


def _as_admitted(job: api.FineTuneJob) -> dict[str, Any]:
    """The object as the API server holds it after defaulting: every default filled in."""
    return job.model_dump(mode="json", by_alias=True, exclude_none=True)


@functools.cache
def _program(rule: str) -> celpy.Runner:
    environment = celpy.Environment()
    return environment.program(environment.compile(rule))


def cel_problems(obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Problem]:
    """Evaluate every x-kubernetes-validations rule of the CRD on `obj` (and `old`)."""
    return list(_walk_rules(_crd_schema(), obj, old, ""))


def _walk_rules(schema: dict[str, Any], value: Any, old: Any, path: str) -> Iterator[Problem]:
    yield from _rule_problems(schema, value, old, path)
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                old_child = old.get(name) if isinstance(old, dict) else None
                yield from _walk_rules(child, value[name], old_child, f"{path}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from _walk_rules(schema["items"], item, None, f"{path}[{index}]")


def _rule_problems(schema: dict[str, Any], value: Any, old: Any, path: str) -> Iterator[Problem]:
    """The rules on one schema node; `self` (and `oldSelf`) converted to CEL once for all."""
    rules = schema.get("x-kubernetes-validations", [])
    if not rules:
        return
    try:
        variables = {"self": _to_cel(value, schema)}
        if old is not None and any("oldSelf" in rule["rule"] for rule in rules):
            variables["oldSelf"] = _to_cel(old, schema)
    except ValueError:  # cel-python refuses integers past int64 ("overflow")
        found = _past_int64(value, path)
        stored = None if found else _past_int64(old, path)
        message = "an integer past int64, which CEL cannot represent"
        yield Problem(
            (found or stored or path).lstrip("."),
            message + " (in the stored object)" * bool(stored),
        )
        return
    for rule in rules:
        if "oldSelf" in rule["rule"] and "oldSelf" not in variables:
            continue  # a transition rule: only an update has an old object
        try:
            passed = bool(_program(rule["rule"]).evaluate(variables))
        except CELEvalError as error:
            passed = False
            rule = {**rule, "message": f"{rule['message']} (rule failed to evaluate: {error})"}
        if not passed:
            field = rule.get("fieldPath", "")
            yield Problem(f"{path}{field}".lstrip("."), rule["message"])


def _past_int64(value: Any, path: str) -> str | None:
    """The path of the first integer in `value` that int64 cannot hold."""
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return path
    if isinstance(value, dict):
        children = [(f"{path}.{key}", child) for key, child in value.items()]
    elif isinstance(value, list):
        children = [(f"{path}[{index}]", child) for index, child in enumerate(value)]
    else:
        return None
    return next(filter(None, (_past_int64(child, where) for where, child in children)), None)


def _to_cel(value: Any, schema: dict[str, Any]) -> Any:
    return json_to_cel(_typed(value, schema))


def _typed(value: Any, schema: dict[str, Any]) -> Any:
    """JSON typed by the schema: a `number` written as 0 is a double, as in the API server
    (cel-python would otherwise make it an int and refuse int + double)."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        default = extra if isinstance(extra, dict) else {}
        return {k: _typed(v, properties.get(k, default)) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v, schema.get("items", {})) for v in value]
    return value


def _kind_of(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )
