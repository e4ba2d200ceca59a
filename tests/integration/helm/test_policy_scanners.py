"""checkov on everything we ask a cluster to run, hadolint on both images.

A finding may only stay if the object carries an annotation naming the check and the
reason (`checkov.io/skipN: CKV_ID=reason`); hadolint must find nothing at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import pod_security_standards as pss
from tests.factories import EXAMPLES
from tests.helm_chart import REPO, TOOLS, render_text, tool

pytestmark = pytest.mark.integration

CHART_VARIANTS = {
    "defaults": {},
    "everything": {
        "watchNamespaces": ["team-a", "team-b"],
        "metrics": {"port": 8080, "serviceMonitor": {"enabled": True}},
        "dashboards": {"enabled": True},
        "replicaCount": 2,
        "peering": {"enabled": True},
    },
}


def checkov(manifest: Path) -> dict[str, Any]:
    """checkov's kubernetes checks on one multi-document file, offline."""
    binary = tool("checkov", TOOLS / "checkov" / "bin" / "checkov")
    started = time.monotonic()
    result = subprocess.run(
        [binary, "--file", str(manifest), "--framework", "kubernetes", "--output", "json",
         "--quiet", "--compact", "--skip-download"],  # --skip-download: no calls home
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    print(f"checkov on {manifest.name}: {time.monotonic() - started:.1f}s")
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    # One framework gives one report; checkov says nothing at all when it found no resource.
    assert isinstance(report, dict), result.stdout[:500]
    return report


def unexplained(report: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Failed checks, and skipped ones whose annotation gives no reason."""
    results = report["results"]
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]
    ]
    silent = [
        f"{c['check_id']} {c['resource']}"
        for c in results.get("skipped_checks", [])
        if len((c.get("check_result") or {}).get("suppress_comment") or "") < 10
    ]
    return failed, silent


@pytest.mark.parametrize("values", CHART_VARIANTS.values(), ids=CHART_VARIANTS.keys())
def test_checkov_passes_the_rendered_chart(values: dict[str, Any], tmp_path: Path) -> None:
    manifest = tmp_path / "chart.yaml"
    manifest.write_text(render_text(values))
    report = checkov(manifest)
    assert unexplained(report) == ([], [])
    assert report["summary"]["passed"] > 100  # it really looked at the objects


def rendered_examples(folder: Path) -> list[dict[str, Any]]:
    """`finetune render` of each example, placed in a namespace as an admin would."""
    documents = []
    for path in EXAMPLES:
        job = yaml.safe_load(path.read_text())
        job["metadata"].setdefault("namespace", "ml-team")  # checkov rightly flags `default`
        copy = folder / path.name
        copy.write_text(yaml.safe_dump(job))
        result = subprocess.run(
            [sys.executable, "-m", "finetune_operator.cli", "render", str(copy)],
            capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        documents += [d for d in yaml.safe_load_all(result.stdout) if d]
    return documents


def as_pods(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    """The pods KubeRay makes from a RayJob's templates (it keeps their metadata), which
    checkov can read: it does not look inside a RayJob."""
    pods = []
    for where, template in pss.pod_templates(rayjob):
        name = where.split("/", 1)[1].replace(" ", "-")
        metadata = {
            **template.get("metadata", {}),
            "name": name,
            "namespace": rayjob["metadata"]["namespace"],
        }
        pods.append(
            {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}
        )
    return pods


def test_checkov_passes_what_finetune_render_prints(tmp_path: Path) -> None:
    documents = rendered_examples(tmp_path)
    rayjobs = [d for d in documents if d["kind"] == "RayJob"]
    assert len(rayjobs) == len(EXAMPLES)
    pods = [pod for rayjob in rayjobs for pod in as_pods(rayjob)]
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(documents + pods))
    report = checkov(manifest)
    assert unexplained(report) == ([], [])
    assert report["summary"]["resource_count"] >= len(pods)


def test_checkov_would_flag_a_pod_without_our_settings(tmp_path: Path) -> None:
    """The scan has teeth: the same pods without securityContext or annotations fail."""
    documents = rendered_examples(tmp_path)
    rayjob = next(d for d in documents if d["kind"] == "RayJob")
    pods = as_pods(rayjob)
    for pod in pods:
        pod["metadata"].pop("annotations")
        pod["spec"].pop("securityContext")
        for container in pod["spec"]["containers"]:
            container.pop("securityContext")
    manifest = tmp_path / "bare.yaml"
    manifest.write_text(yaml.safe_dump_all(pods))
    failed, _ = unexplained(checkov(manifest))
    assert any(f.startswith("CKV_K8S_20 ") for f in failed)  # allowPrivilegeEscalation
    assert any(f.startswith("CKV_K8S_37 ") for f in failed)  # capabilities


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_hadolint_finds_nothing(dockerfile: str) -> None:
    binary = tool("hadolint", Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [binary, "--format", "json", str(REPO / dockerfile)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0
