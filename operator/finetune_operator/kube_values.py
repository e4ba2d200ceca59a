"""The formats Kubernetes checks on the values our children carry (labels, names, images).

A spec value that ends up as a label, a pod field or an object name must already have
Kubernetes' own format, or the API server refuses the child after the job was accepted.
The patterns are RE2-, Rust- and Python-compatible: the CRD, pydantic and jsonschema all
use them. `HINTS` says in words what each pattern allows, for `finetune validate`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field
from pydantic_core import PydanticCustomError

_ALNUM_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"

# A label value: at most 63 characters, empty allowed (kueue.x-k8s.io/queue-name, nodeSelector).
LABEL_VALUE = rf"^({_ALNUM_NAME})?$"
MAX_LABEL_VALUE = 63
# A label key: an optional DNS-1123 subdomain prefix and '/', then a name of <= 63 characters.
# The prefix's own limit (253) is a CEL rule beside the pattern: RE2 has no look-ahead.
LABEL_KEY = rf"^({_DNS_LABEL}([.]{_DNS_LABEL})*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$"
MAX_LABEL_KEY = 253 + 1 + 63
LONG_KEY_PREFIX = r"^[^/]{254,}/"
DNS_1123_LABEL = rf"^{_DNS_LABEL}$"

# An image reference as docker parses it: [registry[:port]/]path[:tag][@digest]. The first
# component is a registry only when it has a '.' or a port or is localhost; the path is
# lower case.
_REGISTRY_PART = r"[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?"
_REGISTRY = (
    rf"(localhost(:[0-9]+)?|{_REGISTRY_PART}([.]{_REGISTRY_PART})+(:[0-9]+)?"
    rf"|{_REGISTRY_PART}:[0-9]+)"
)
_PATH_PART = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE = rf"^({_REGISTRY}/)?{_PATH_PART}(/{_PATH_PART})*(:{_TAG})?(@{_DIGEST})?$"

# A positive Kubernetes quantity: a pod with no memory never schedules.
_POSITIVE_NUMBER = r"([0-9]*[1-9][0-9]*([.][0-9]+)?|[0-9]+[.][0-9]*[1-9][0-9]*)"
POSITIVE_QUANTITY = rf"^{_POSITIVE_NUMBER}(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"

LABEL_KEY_RULE_TEXT = (
    "a label key: an optional DNS subdomain prefix of at most 253 characters and '/', then "
    "a name of at most 63 letters, digits, '-', '_' or '.' starting and ending with a "
    "letter or digit"
)

HINTS = {
    LABEL_VALUE: "must be a label value: at most 63 letters, digits, '-', '_' or '.', "
    "starting and ending with a letter or digit",
    LABEL_KEY: f"must be {LABEL_KEY_RULE_TEXT}",
    DNS_1123_LABEL: "must be a DNS-1123 label: at most 63 lower-case letters, digits and '-', "
    "starting and ending with a letter or digit",
    IMAGE_REFERENCE: "must be an image reference such as registry.example.com/team/trainer:1.0 "
    "(lower-case path, no spaces, optional :tag and @sha256:digest)",
    POSITIVE_QUANTITY: "must be a Kubernetes quantity of more than zero, such as 64Gi or 512Mi",
}


LabelValue = Annotated[str, Field(max_length=MAX_LABEL_VALUE, pattern=LABEL_VALUE)]


def label_keys(selector: dict[str, str]) -> dict[str, str]:
    """A pydantic validator naming the first key that is not a label key.

    Map keys are checked here, not in the CRD: a structural schema cannot constrain them,
    and a CEL rule over keys of unbounded length exceeds the API server's cost budget. The
    operator parses with the models, so a bad key fails the job (InvalidSpec) before any
    pod is created."""
    for key in selector:
        if not re.match(LABEL_KEY, key) or len(key) > MAX_LABEL_KEY:
            raise PydanticCustomError("label_key", f"key {key!r} must be {LABEL_KEY_RULE_TEXT}")
        if re.match(LONG_KEY_PREFIX, key):
            raise PydanticCustomError(
                "label_key", f"key {key!r}: the prefix must be at most 253 characters"
            )
    return selector


def once_each(items: list[Any]) -> list[Any]:
    """A pydantic validator for list-type set fields: the API server refuses an item twice."""
    repeated = duplicates([str(item) for item in items])
    if repeated:
        named = ", ".join(repr(item) for item in repeated)
        raise PydanticCustomError(
            "duplicate_items", f"lists {named} more than once; list each item once"
        )
    return items


def duplicates(items: list[str]) -> list[str]:
    """Items listed more than once, each named once, in order of first repetition."""
    seen: set[str] = set()
    repeated: list[str] = []
    for item in items:
        if item in seen and item not in repeated:
            repeated.append(item)
        seen.add(item)
    return repeated
