"""The Helm chart through the real `helm`: lint, what each install mode renders, the values
schema, and every rendered object checked by kubernetes-validate and the Pod Security check."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from finetune_operator.settings import Settings

from tests import pod_security_standards as pss
from tests.helm_chart import (
    CHART,
    RELEASE,
    RELEASE_NAMESPACE,
    REPO,
    by_kind,
    refusal,
    render,
    run_helm,
)

pytestmark = pytest.mark.integration

WATCHED = {"watchNamespaces": ["team-a", "team-b"]}
MONITORED = {
    "metrics": {"port": 8080, "serviceMonitor": {"enabled": True}},
    "dashboards": {"enabled": True},
}
PEERING = {"replicaCount": 2, "peering": {"enabled": True, "name": "finetune"}}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "watchNamespaces": WATCHED,
    "serviceMonitor+dashboards": MONITORED,
    "peering": PEERING,
    "everything": {**WATCHED, **MONITORED, **PEERING},
}
# The chart's kubeVersion floor, a middle one and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.27.0", "1.31.0", "1.37.0"]
# Kinds from CRDs kubernetes-validate has no schema for (Prometheus Operator, kopf).
CUSTOM_KINDS = {"ServiceMonitor", "ClusterKopfPeering", "KopfPeering"}


def deployment(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = by_kind(documents, "Deployment")
    return found


def operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = deployment(documents)["spec"]["template"]["spec"]["containers"]
    return container


def all_rules(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for d in documents if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_helm_lint_strict_passes(values: dict[str, Any]) -> None:
    result = run_helm("lint", "--strict", values=values)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def test_defaults_install_one_operator_for_all_namespaces() -> None:
    documents = render()
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
         "Service", "Deployment", "NetworkPolicy", "Pod"]
    )  # fmt: skip
    assert by_kind(documents, "Role") == []
    spec = deployment(documents)["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert operator_container(documents)["args"] == [
        "--log-format=json",
        "--health-port=8081",
        "--metrics-port=8080",
        "--trainer-image=ghcr.io/finetune-operator/trainer:0.1.0",
    ]
    # kopf lists namespaces only when it watches a few: no rule on them here.
    assert not [r for r in all_rules(documents) if "namespaces" in r["resources"]]


def test_watch_namespaces_gives_a_role_in_each_and_keeps_cluster_rules_cluster_wide() -> None:
    documents = render(WATCHED)
    roles = by_kind(documents, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = by_kind(documents, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": RELEASE,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RELEASE, "namespace": RELEASE_NAMESPACE}
        ]
    (cluster_role,) = by_kind(documents, "ClusterRole")
    resources = sorted(r for rule in cluster_role["rules"] for r in rule["resources"])
    assert resources == ["customresourcedefinitions", "namespaces"]
    args = operator_container(documents)["args"]
    assert args[-2:] == ["--namespace=team-a", "--namespace=team-b"]


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_rbac_has_no_wildcards_and_nothing_on_secrets_or_exec(values: dict[str, Any]) -> None:
    for rule in all_rules(render(values)):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        assert not {"secrets", "pods/exec", "pods/attach", "pods"} & set(rule["resources"]), rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule


def test_operator_runs_locked_down_as_the_images_user() -> None:
    documents = render()
    pod = deployment(documents)["spec"]["template"]["spec"]
    container = operator_container(documents)
    user = re.search(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    assert pod["securityContext"]["runAsUser"] == int(user[1])
    assert pod["securityContext"]["runAsGroup"] == int(user[2])
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert container["resources"]["limits"] and container["resources"]["requests"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {
        "FINETUNE_TRAINER_UID": "1000",
        "FINETUNE_TRAINER_GID": "100",
        "FINETUNE_TRAINER_TELEMETRY": "false",  # nothing leaves the building by default
    }


def test_an_admin_opts_in_to_trainer_usage_statistics_in_one_value() -> None:
    env = {
        e["name"]: e["value"] for e in operator_container(render({"trainerTelemetry": True}))["env"]
    }
    assert env["FINETUNE_TRAINER_TELEMETRY"] == "true"
    assert Settings.from_env(env).trainer_telemetry


@pytest.mark.parametrize("values", VARIANTS.values(), ids=VARIANTS.keys())
def test_every_pod_of_the_chart_passes_the_restricted_profile(values: dict[str, Any]) -> None:
    documents = render(values)
    pods = [d for d in documents if d["kind"] in ("Deployment", "Pod")]
    assert len(pods) == 2
    for obj in pods:
        assert pss.template_violations(obj) == []


def test_helm_test_asks_the_operators_health_port_through_its_service() -> None:
    documents = render()
    (pod,) = by_kind(documents, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (service,) = by_kind(documents, "Service")
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://{service['metadata']['name']}.{RELEASE_NAMESPACE}.svc:8081/healthz" in script
    assert {"name": "health", "port": 8081, "targetPort": "health", "protocol": "TCP"} in service[
        "spec"
    ]["ports"]
    # The Service selects the operator, not the test pod.
    selector = service["spec"]["selector"].items()
    assert selector <= deployment(documents)["spec"]["template"]["metadata"]["labels"].items()
    assert not selector <= pod["metadata"]["labels"].items()


def test_service_monitor_scrapes_the_metrics_port_of_the_service() -> None:
    documents = render(MONITORED)
    (monitor,) = by_kind(documents, "ServiceMonitor")
    (service,) = by_kind(documents, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # Our series' own namespace/job labels survive the scrape (the dashboard queries them).
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True
    assert "metrics" in [p["name"] for p in service["spec"]["ports"]]
    assert by_kind(render(), "ServiceMonitor") == []


def test_dashboards_become_a_configmap_for_grafanas_sidecar(tmp_path: Path) -> None:
    chart = tmp_path / "finetune-operator"
    shutil.copytree(CHART, chart)
    dashboard = {
        "title": "finetune-operator",
        "panels": [{"type": "timeseries", "targets": [{"expr": "finetune_jobs"}]}],
    }
    (chart / "dashboards").mkdir(exist_ok=True)
    for old in (chart / "dashboards").glob("*.json"):
        old.unlink()
    (chart / "dashboards" / "jobs.json").write_text(json.dumps(dashboard))
    (chart / "dashboards" / "notes.txt").write_text("not a dashboard")
    (configmap,) = by_kind(render({"dashboards": {"enabled": True}}, chart=chart), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(configmap["data"]) == ["jobs.json"]
    assert json.loads(configmap["data"]["jobs.json"]) == dashboard
    assert by_kind(render({"dashboards": {"enabled": False}}, chart=chart), "ConfigMap") == []


def test_the_real_chart_renders_its_dashboards_if_it_has_any() -> None:
    shipped = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    configmaps = by_kind(render({"dashboards": {"enabled": True}}), "ConfigMap")
    assert sorted(name for c in configmaps for name in c["data"]) == shipped


def peering_rules(documents: list[dict[str, Any]]) -> list[tuple[str, str, str, list[str]]]:
    return [
        (d["kind"], d["metadata"].get("namespace", ""), resource, rule["verbs"])
        for d in documents
        if d["kind"] in ("Role", "ClusterRole")
        for rule in d["rules"]
        if rule["apiGroups"] == ["kopf.dev"]
        for resource in rule["resources"]
    ]


def test_peering_runs_several_replicas_with_rolling_updates() -> None:
    documents = render(PEERING)
    spec = deployment(documents)["spec"]
    assert spec["replicas"] == 2 and spec["strategy"] == {"type": "RollingUpdate"}
    assert "--peering=finetune" in operator_container(documents)["args"]
    (peering,) = by_kind(documents, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "finetune"
    verbs = ["list", "watch", "patch"]
    assert peering_rules(documents) == [("ClusterRole", "", "clusterkopfpeerings", verbs)]


def test_peering_of_an_operator_watching_listed_namespaces_lives_in_each() -> None:
    # kopf keeps a namespace-bound operator's peering as a KopfPeering in each namespace.
    documents = render({**PEERING, **WATCHED})
    assert by_kind(documents, "ClusterKopfPeering") == []
    peerings = by_kind(documents, "KopfPeering")
    assert sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("team-a", "finetune"),
        ("team-b", "finetune"),
    ]
    verbs = ["list", "watch", "patch"]
    assert sorted(peering_rules(documents)) == [
        ("Role", "team-a", "kopfpeerings", verbs),
        ("Role", "team-b", "kopfpeerings", verbs),
    ]


def test_two_replicas_without_peering_are_refused() -> None:
    assert "replicaCount > 1 needs peering.enabled" in refusal({"replicaCount": 2})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCount": "one"}, "/replicaCount"),
        ({"watchNamespaces": "team-a"}, "/watchNamespaces"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"image": {"repository": "r", "tag": 1}}, "/image/tag"),
        (
            {"metrics": {"port": 8080, "serviceMonitor": {"enabled": "yes"}}},
            "/metrics/serviceMonitor/enabled",
        ),
        ({"dashboards": {"enabled": 1}}, "/dashboards/enabled"),
        ({"healthPort": 70000}, "/healthPort"),
        ({"trainerUser": {"uid": 0, "gid": 100}}, "/trainerUser/uid"),
        ({"trainerTelemetry": "yes"}, "/trainerTelemetry"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
        ({"podSecurityContext": {"runAsUser": "root"}}, "/podSecurityContext/runAsUser"),
        (
            {"securityContext": {"readOnlyRootFilesystem": "true"}},
            "/securityContext/readOnlyRootFilesystem",
        ),
        ({"trainerImage": ""}, "/trainerImage"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ],
)
@pytest.mark.parametrize("command", ["template", "lint"])
def test_values_schema_refuses_wrong_types(
    values: dict[str, Any], complaint: str, command: str
) -> None:
    assert complaint in refusal(values, command=command)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_strictly(version: str) -> None:
    unknown: set[str] = set()
    for values in VARIANTS.values():
        for document in render(values):
            if document["kind"] in CUSTOM_KINDS:
                # Honestly unchecked here: kubernetes-validate knows built-in kinds only.
                with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                    kubernetes_validate.validate(document, version, strict=True)
                unknown.add(document["kind"])
                continue
            kubernetes_validate.validate(document, version, strict=True)
    assert unknown == CUSTOM_KINDS


def test_strict_validation_catches_a_misspelt_field() -> None:
    (deployment_doc,) = by_kind(render(), "Deployment")
    deployment_doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment_doc, KUBERNETES_VERSIONS[-1], strict=True)
