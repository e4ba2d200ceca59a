"""Which RBAC rule allows an API request: the API server's RequestInfo and rule matching.

Written from Kubernetes' own logic (apiserver `RequestInfoFactory`, RBAC `RuleAllows`) so
the RBAC coverage check can say, for each request the operator made against kmock, whether
the chart's rendered Roles and ClusterRoles would let it through on a real cluster.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

# The namespace subresources that stay on the `namespaces` resource (not a resource of their own).
NAMESPACE_SUBRESOURCES = {"status", "finalize"}
# What the default `system:discovery` and `system:public-info-viewer` ClusterRoles let every
# authenticated user read: API discovery, version and health.
DISCOVERY_URLS = (
    "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version",
    "/version/", "/openapi", "/openapi/*",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What the authorizer sees: a resource request, or a plain URL (discovery)."""

    verb: str
    path: str
    is_resource: bool = True
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def __str__(self) -> str:
        if not self.is_resource:
            return f"{self.verb} {self.path}"
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb} {self.api_group or 'core'}/{self.full_resource}{where}"


_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "GET": "get", "HEAD": "get"}


def request_info(method: str, path_and_query: str) -> RequestInfo:
    """Map an HTTP request to (verb, group, resource, subresource, namespace) as the API server does."""
    url = urllib.parse.urlsplit(path_and_query)
    query = urllib.parse.parse_qs(url.query)
    parts = [part for part in url.path.split("/") if part]
    plain = RequestInfo(verb=method.lower(), path=url.path, is_resource=False)
    if not parts or parts[0] not in ("api", "apis"):
        return plain
    if parts[0] == "api":
        group, rest = "", parts[2:]
        if len(parts) < 3:
            return plain
    else:
        if len(parts) < 4:
            return plain
        group, rest = parts[1], parts[3:]
    verb = _VERBS.get(method.upper(), "delete" if method.upper() == "DELETE" else "")
    if rest and rest[0] == "watch":  # the deprecated /watch/ path prefix
        verb, rest = "watch", rest[1:]
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = rest[1]
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if not name:
        if verb == "get":
            watched = query.get("watch", [""])[0].lower() in ("true", "1")
            verb = "watch" if watched else "list"
        elif verb == "delete":
            verb = "deletecollection"
    return RequestInfo(
        verb=verb,
        path=url.path,
        api_group=group,
        resource=resource,
        subresource=subresource,
        namespace=namespace,
        name=name,
    )


@dataclasses.dataclass(frozen=True)
class Grant:
    """One verb on one resource of one group, from one rule of one role, where it applies."""

    role: str
    api_group: str
    resource: str
    verb: str
    namespace: str | None  # None: a ClusterRole bound cluster-wide

    def allows(self, request: RequestInfo) -> bool:
        if not request.is_resource:
            return False
        if self.namespace is not None and request.namespace != self.namespace:
            return False
        return (
            self.api_group in (request.api_group, "*")
            and self.resource in (request.full_resource, "*")
            and self.verb in (request.verb, "*")
        )

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace is not None else ""
        return f"{self.role}: {self.verb} {self.api_group or 'core'}/{self.resource}{where}"


def grants(documents: Iterable[dict[str, Any]], service_account: str) -> list[Grant]:
    """Every (group, resource, verb) the rendered roles give the ServiceAccount, and where."""
    documents = [d for d in documents if d]
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d.get("rules") or []
        for d in documents
        if d["kind"] in ("Role", "ClusterRole")
    }
    found: list[Grant] = []
    for binding in documents:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s.get("name") == service_account for s in binding.get("subjects") or []):
            continue
        ref = binding["roleRef"]
        namespace = (
            binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        )
        role_namespace = namespace if ref["kind"] == "Role" else None
        rules = roles[ref["kind"], role_namespace, ref["name"]]
        found += list(_expand(f"{ref['kind']}/{ref['name']}", rules, namespace))
    return found


def _expand(role: str, rules: list[dict[str, Any]], namespace: str | None) -> Iterator[Grant]:
    for rule in rules:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    yield Grant(role, group, resource, verb, namespace)


def allowing(request: RequestInfo, granted: Iterable[Grant]) -> list[Grant]:
    """The grants that allow this request; discovery URLs are allowed to everyone."""
    if not request.is_resource:
        public = any(fnmatch.fnmatchcase(request.path, url) for url in DISCOVERY_URLS)
        return [Grant("system:discovery", "", request.path, request.verb, None)] if public else []
    return [grant for grant in granted if grant.allows(request)]
