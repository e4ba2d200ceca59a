"""`helm test`'s probe, run against the real operator: it passes when the operator answers
on its health port and fails when nothing does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helm_chart import RELEASE, RELEASE_NAMESPACE, by_kind, render
from tests.integration.operator.operator_cluster import (
    OperatorProcess,
    emulated_cluster,
    free_port,
)

pytestmark = pytest.mark.integration


def probe_script(port: int) -> str:
    """The hook pod's script, aimed at this machine instead of the Service's DNS name."""
    (pod,) = by_kind(render({"healthPort": port}), "Pod")
    command = pod["spec"]["containers"][0]["command"]
    assert command[:2] == ["python", "-c"]
    service = f"{RELEASE}.{RELEASE_NAMESPACE}.svc:{port}"
    assert service in command[2]
    return command[2].replace(service, f"127.0.0.1:{port}")


def run_probe(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


async def test_the_probe_passes_against_a_running_operator(tmp_path: Path) -> None:
    async with emulated_cluster() as cluster:
        operator = OperatorProcess(cluster, tmp_path)
        await operator.start()
        try:
            result = run_probe(probe_script(operator.health_port))
        finally:
            operator.terminate()
    assert result.returncode == 0, result.stderr
    assert "/healthz 200" in result.stdout


def test_the_probe_fails_when_nothing_answers() -> None:
    result = run_probe(probe_script(free_port()))
    assert result.returncode != 0
    assert "Connection refused" in result.stderr
