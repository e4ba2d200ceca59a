"""Files generated from code and checked in (the CRD, the Grafana dashboard): written by
`make generate`, and a `--check` that fails when a checked-in copy is stale (`make verify`)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path


def write_or_check(text: str, paths: Sequence[Path], *, check: bool) -> int:
    """Write `text` to every path; with `check`, write nothing and return 1 if any differs."""
    if check:
        stale = [path for path in paths if not path.exists() or path.read_text() != text]
        for path in stale:
            print(f"{path} is stale: run `make generate` and commit it", file=sys.stderr)
        return 1 if stale else 0
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 0
