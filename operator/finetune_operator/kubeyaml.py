"""Read manifest files the way kubectl reads them, within bounds.

kubectl turns YAML into JSON with sigs.k8s.io/yaml, which resolves plain scalars as go-yaml
v2 does: YAML 1.1 booleans (y/n, yes/no, on/off as well as true/false), YAML 1.2 style
numbers (`2e-4`, `1E3`, `.5`, `0o17`, `1_000`), merge keys (`<<: *defaults`), and no
timestamps on the JSON side. PyYAML's own resolvers are YAML 1.1's, which read `2e-4` as a
string; this loader uses go-yaml's rules instead, and keeps refusing duplicate keys.

A float that JSON writes as an integer (Go writes 1000.0 as `1000`) is read as that integer,
so `maxSteps: 1e3` is the 1000 the API server would see.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.resolver import BaseResolver

# etcd stores objects of at most 1.5 MiB and a FineTuneJob is a few KiB (its longest field,
# chatTemplate, 64 KiB), so 1 MiB holds many jobs while keeping the worst case (a file of
# tiny nodes) to a few seconds of parsing.
MAX_FILE_BYTES = 1024 * 1024
# Nodes a document may have once its aliases are expanded: go-yaml refuses "excessive
# aliasing" too, and every later layer walks the expanded tree.
MAX_EXPANDED_NODES = 200_000
# A FineTuneJob is seven levels deep; metadata the API server adds (managedFields) a few more.
MAX_DEPTH = 100

BOOL_WORDS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE"), True),
    **dict.fromkeys(("on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE"), False),
    **dict.fromkeys(("off", "Off", "OFF"), False),
}
SPECIAL_FLOATS = {
    **dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf),
}
INT_RE = re.compile(
    r"^[-+]?(0[bB]_*[01][01_]*|0[oO]_*[0-7][0-7_]*|0[xX]_*[0-9a-fA-F][0-9a-fA-F_]*|[0-9][0-9_]*)$"
)
FLOAT_RE = re.compile(r"^[-+]?(\.[0-9_]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?$")
# Go's json.Marshal writes a float64 without an exponent (so as an integer, when it is one)
# below 1e21.
JSON_INTEGRAL_LIMIT = 1e21


class ManifestFileError(Exception):
    """A manifest file that cannot be read as YAML; the message names line and column."""


class _KubectlResolver(BaseResolver):
    """go-yaml v2's implicit types: no timestamps, no sexagesimal numbers, no `=`."""


_KubectlResolver.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile("^(?:" + "|".join(BOOL_WORDS) + ")$"),
    list("yYnNtTfFoO"),
)
_KubectlResolver.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_KubectlResolver.add_implicit_resolver(
    "tag:yaml.org,2002:int", INT_RE, list("-+0123456789")
)  # before floats: an integer matches the float pattern too
_KubectlResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(f"{FLOAT_RE.pattern}|^(?:{'|'.join(map(re.escape, SPECIAL_FLOATS))})$"),
    list("-+.0123456789"),
)
_KubectlResolver.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^<<$"), ["<"])


class _Constructor(SafeConstructor):
    """SafeConstructor with go-yaml's scalars and duplicate keys refused."""

    def construct_yaml_bool(self, node: yaml.ScalarNode) -> bool:
        value = self.construct_scalar(node)
        if value.lower() in ("true", "false"):  # an explicit !!bool tag on any spelling
            return value.lower() == "true"
        return BOOL_WORDS[value]

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | float:  # type: ignore[override]
        text = str(self.construct_scalar(node)).replace("_", "")
        sign = -1 if text.startswith("-") else 1
        digits = text.lstrip("+-")
        if digits[:2].lower() in ("0b", "0o", "0x"):
            return sign * int(digits, {"b": 2, "o": 8, "x": 16}[digits[1].lower()])
        if len(digits) > 1 and digits.startswith("0"):
            if set(digits) <= set("01234567"):
                return sign * int(digits, 8)  # Go reads a leading 0 as octal
            return _json_number(float(text))  # "09": not octal, so go-yaml's float
        return sign * int(digits)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float | int:
        text = str(self.construct_scalar(node))
        if text in SPECIAL_FLOATS:
            return SPECIAL_FLOATS[text]
        return _json_number(float(text.replace("_", "")))

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        """Keys as JSON has them; a key written twice is refused, one a merge (`<<`) brings
        in may be overridden."""
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # names what it found instead
        self._refuse_duplicates(node)
        self.flatten_mapping(node)
        mapping = {}
        for key_node, value_node in node.value:
            key = _json_key(self.construct_object(key_node, deep=deep))
            if not isinstance(key, Hashable):
                raise ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key",
                    key_node.start_mark,
                )  # fmt: skip
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = _json_key(self.construct_object(key_node))
            if not isinstance(key, Hashable):
                continue  # construct_mapping names it
            if key in seen:
                raise ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)


_Constructor.add_constructor("tag:yaml.org,2002:bool", _Constructor.construct_yaml_bool)  # type: ignore[type-var]
_Constructor.add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)  # type: ignore[type-var]
_Constructor.add_constructor("tag:yaml.org,2002:float", _Constructor.construct_yaml_float)  # type: ignore[type-var]


def _json_number(value: float) -> float | int:
    if math.isfinite(value) and value.is_integer() and abs(value) < JSON_INTEGRAL_LIMIT:
        return int(value)
    return value


def _json_key(key: Any) -> Any:
    """Map keys as JSON has them: sigs.k8s.io/yaml writes number and boolean keys as text."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int | float) and math.isfinite(key):
        return str(key)
    return key


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    _Constructor,
    _KubectlResolver,
):
    """PyYAML's Python parser (libyaml's words its errors differently and crashes the
    interpreter on deep nesting) with kubectl's scalars and a bound on nesting."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        _Constructor.__init__(self)
        _KubectlResolver.__init__(self)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# ---------------------------------------------------------------------------- reading


def read_manifest_text(path: Path, limit: int = MAX_FILE_BYTES) -> str:
    """The file's text, at most `limit` bytes; ManifestFileError for what is no manifest."""
    try:
        # O_NONBLOCK: opening a FIFO nobody writes to returns at once (and reads as empty)
        # instead of hanging; reads below block as usual.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except IsADirectoryError:
        raise ManifestFileError("is a directory, not a manifest file") from None
    except OSError as error:
        raise ManifestFileError(f"cannot read: {error.strerror or error}") from None
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.close(fd)
        raise ManifestFileError("is a directory, not a manifest file")
    with os.fdopen(fd, "rb") as stream:
        os.set_blocking(fd, True)
        try:
            data = stream.read(limit + 1)
        except OSError as error:
            raise ManifestFileError(f"cannot read: {error.strerror or error}") from None
    if len(data) > limit:
        raise ManifestFileError(f"larger than {limit} bytes: not a manifest kubectl could apply")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestFileError("not a UTF-8 text file") from None


def load_documents(text: str) -> Iterator[Any]:
    """The non-empty YAML documents of `text`, as kubectl would send them (JSON values)."""
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            check_expansion(node)
            document = loader.construct_document(node)
            if document is not None:
                yield document
    except yaml.YAMLError as error:
        raise ManifestFileError(describe_yaml_error(error)) from None
    finally:
        loader.dispose()


def check_expansion(root: yaml.Node, *, max_nodes: int = MAX_EXPANDED_NODES) -> None:
    """Refuse a document whose aliases expand past `max_nodes` nodes, or refer to themselves."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > max_nodes:
                raise ManifestFileError(
                    f"{_where(node)}more than {max_nodes} values, counting those aliases repeat"
                )
            continue
        if id(node) in sizes:
            continue
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise ManifestFileError(f"{_where(child)}an alias refers to itself")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _where(node: yaml.Node) -> str:
    mark = node.start_mark
    return f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""


def describe_yaml_error(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = getattr(error, "problem", None) or str(error)
    return f"{where}invalid YAML: {problem}"
