"""The RBAC coverage check's model of the API server: RequestInfo and rule matching."""

from __future__ import annotations

import pytest

from tests import rbac

ROLE = [
    {"apiGroups": ["finetune.io"], "resources": ["finetunejobs"], "verbs": ["get", "watch"]},
    {"apiGroups": ["finetune.io"], "resources": ["finetunejobs/status"], "verbs": ["patch"]},
]


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        (
            "GET",
            "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs/j",
            ("get", "finetune.io", "finetunejobs", "a", "j"),
        ),
        (
            "GET",
            "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs",
            ("list", "finetune.io", "finetunejobs", "a", ""),
        ),
        (
            "GET",
            "/apis/finetune.io/v1alpha1/finetunejobs?watch=true&resourceVersion=5",
            ("watch", "finetune.io", "finetunejobs", "", ""),
        ),
        (
            "GET",
            "/apis/finetune.io/v1alpha1/finetunejobs?watch=1",
            ("watch", "finetune.io", "finetunejobs", "", ""),
        ),
        (
            "GET",
            "/apis/ray.io/v1/watch/namespaces/a/rayjobs",
            ("watch", "ray.io", "rayjobs", "a", ""),
        ),
        (
            "PATCH",
            "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs/j/status",
            ("patch", "finetune.io", "finetunejobs/status", "a", "j"),
        ),
        ("POST", "/api/v1/namespaces/a/events", ("create", "", "events", "a", "")),
        ("PUT", "/api/v1/namespaces/a/configmaps/c", ("update", "", "configmaps", "a", "c")),
        (
            "DELETE",
            "/apis/ray.io/v1/namespaces/a/rayjobs/r",
            ("delete", "ray.io", "rayjobs", "a", "r"),
        ),
        (
            "DELETE",
            "/apis/ray.io/v1/namespaces/a/rayjobs",
            ("deletecollection", "ray.io", "rayjobs", "a", ""),
        ),
        ("GET", "/api/v1/namespaces", ("list", "", "namespaces", "", "")),
        ("GET", "/api/v1/namespaces/a", ("get", "", "namespaces", "a", "a")),
        ("PUT", "/api/v1/namespaces/a/finalize", ("update", "", "namespaces/finalize", "a", "a")),
    ],
)
def test_request_info_as_the_api_server_reads_it(
    method: str, path: str, expected: tuple[str, ...]
) -> None:
    info = rbac.request_info(method, path)
    assert info.is_resource
    assert (info.verb, info.api_group, info.full_resource, info.namespace, info.name) == expected


@pytest.mark.parametrize(
    "path", ["/api", "/api/v1", "/apis", "/apis/ray.io", "/apis/ray.io/v1", "/version"]
)
def test_discovery_is_not_a_resource_request_and_everyone_may_read_it(path: str) -> None:
    info = rbac.request_info("GET", path)
    assert not info.is_resource
    assert rbac.allowing(info, []) != []


def test_other_plain_urls_are_refused() -> None:
    assert rbac.allowing(rbac.request_info("GET", "/metrics"), []) == []


def bound(kind: str, namespace: str | None = None) -> list[dict]:
    role_kind = "Role" if kind == "RoleBinding" else "ClusterRole"
    meta = {"name": "op", **({"namespace": namespace} if namespace else {})}
    return [
        {"kind": role_kind, "metadata": meta, "rules": ROLE},
        {
            "kind": kind,
            "metadata": meta,
            "roleRef": {"kind": role_kind, "name": "op"},
            "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": "ops"}],
        },
    ]


def test_a_role_allows_its_verbs_in_its_namespace_only() -> None:
    grants = rbac.grants(bound("RoleBinding", "a"), "sa")
    allowed = lambda method, path: bool(rbac.allowing(rbac.request_info(method, path), grants))  # noqa: E731
    assert allowed("GET", "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs/j")
    assert not allowed("GET", "/apis/finetune.io/v1alpha1/namespaces/b/finetunejobs/j")
    assert not allowed("GET", "/apis/finetune.io/v1alpha1/finetunejobs?watch=true")  # cluster-wide
    assert not allowed("GET", "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs")  # list
    assert allowed("PATCH", "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs/j/status")
    assert not allowed("PATCH", "/apis/finetune.io/v1alpha1/namespaces/a/finetunejobs/j")


def test_a_cluster_role_allows_everywhere_and_other_subjects_get_nothing() -> None:
    documents = bound("ClusterRoleBinding")
    info = rbac.request_info("GET", "/apis/finetune.io/v1alpha1/finetunejobs?watch=true")
    assert rbac.allowing(info, rbac.grants(documents, "sa"))
    assert rbac.grants(documents, "someone-else") == []
