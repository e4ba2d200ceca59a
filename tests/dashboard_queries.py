"""The generated Grafana dashboard as tests read it: its queries, and their variables filled."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
DASHBOARD = ROOT / "charts" / "finetune-operator" / "dashboards" / "finetune-operator.json"
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from panel.get("panels") or []


def targets(dashboard: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of every panel."""
    for panel in panels(dashboard):
        for target in panel.get("targets") or []:
            yield panel["title"], target


def variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in dashboard["templating"]["list"]}


def fill(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name` and `${name}` as Grafana does, longest names first."""
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unfilled variable in {expr}"
    return expr


def label_values_query(query: str) -> tuple[str | None, str]:
    """`label_values(selector, label)` split into (selector or None, label)."""
    match = LABEL_VALUES.match(query.strip())
    assert match, f"not a label_values query: {query}"
    return match.group("selector"), match.group("label")
