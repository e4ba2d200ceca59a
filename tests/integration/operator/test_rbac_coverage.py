"""RBAC proven from what the operator did: every API request it made during the operator
suite is allowed by the chart's rendered rules, in both install modes, and every rule granted
is used.

conftest.py runs this module after every other test of the session, so the record holds
the whole suite's requests (the e2e tests' too, when they run in the same session).
"""

from __future__ import annotations

import pytest

from tests import helm_chart, rbac
from tests.integration.operator.operator_cluster import OPERATOR_REQUESTS, OperatorRequest

pytestmark = pytest.mark.integration

# Rules the suite cannot exercise, each with why the chart still grants it. Anything else
# unused is a finding: drop the rule, or add the test that shows it is needed.
UNUSED_ON_PURPOSE: dict[tuple[str, str, str, str], str] = {
    ("finetune.io", "finetunejobs/finalizers", "update", ""): (
        "no request uses it: the API server's OwnerReferencesPermissionEnforcement admission "
        "checks it when the operator creates a child whose ownerReference sets "
        "blockOwnerDeletion; kmock has no admission plugins"
    ),
    ("", "namespaces", "watch", "some namespaces"): (
        "kopf watches namespaces after listing them when it watches listed ones "
        "(kopf/_core/reactor/observation.py, namespace_observer); kmock answers the "
        "cluster-wide namespace list with a 500, so kopf never gets that far here"
    ),
}


Mode = tuple[tuple[str, ...], str | None]  # (watched namespaces, peering name)


def requests_by_mode() -> dict[Mode, list[OperatorRequest]]:
    assert OPERATOR_REQUESTS, (
        "no operator API request was recorded: this check reads what the operator suite "
        "did, so run it with tests/integration/operator (make test does)"
    )
    modes: dict[Mode, list[OperatorRequest]] = {}
    for request in OPERATOR_REQUESTS:
        modes.setdefault((request.watched, request.peering), []).append(request)
    return modes


def chart_grants(mode: Mode) -> list[rbac.Grant]:
    """The chart's rules for the install that runs the operator as it ran in the suite."""
    watched, peering = mode
    values: dict[str, object] = {"watchNamespaces": list(watched)}
    if peering:
        values["peering"] = {"enabled": True, "name": peering}
    documents = helm_chart.render(values)
    return rbac.grants(documents, helm_chart.SERVICE_ACCOUNT)


def test_the_suite_ran_the_operator_in_both_install_modes() -> None:
    watched = {watched for watched, _ in requests_by_mode()}
    assert () in watched, "no request from an operator watching all namespaces (ClusterRole)"
    assert watched - {()}, "no request from an operator watching listed namespaces (Roles)"
    assert [peering for _, peering in requests_by_mode() if peering], "no peered operator ran"


def test_every_request_the_operator_made_is_allowed_by_the_chart() -> None:
    refused: set[str] = set()
    for mode, requests in requests_by_mode().items():
        granted = chart_grants(mode)
        for request in requests:
            info = rbac.request_info(request.method, request.path_and_query)
            if not rbac.allowing(info, granted):
                refused.add(f"{mode}: {info}  ({request.method} {request.path_and_query})")
    assert sorted(refused) == []


def test_every_rule_the_chart_grants_is_used() -> None:
    """A namespaced rule is the same in a ClusterRole or a Role, and the operator runs the same
    code in both modes: it counts as used if either mode used it. Rules on cluster-scoped
    objects differ by mode (kopf lists namespaces only when it watches a few), so each mode
    must use those it renders."""
    used: set[Rule] = set()
    granted: set[Rule] = set()
    for mode, requests in requests_by_mode().items():
        grants = chart_grants(mode)
        granted |= {rule_of(grant, mode[0]) for grant in grants}
        for request in requests:
            info = rbac.request_info(request.method, request.path_and_query)
            used |= {rule_of(grant, mode[0]) for grant in rbac.allowing(info, grants)}
    unused = sorted(granted - used)
    assert unused == sorted(UNUSED_ON_PURPOSE), "\n".join(map(str, unused))


Rule = tuple[str, str, str, str]  # api group, resource, verb, mode ("" for namespaced rules)
CLUSTER_SCOPED = {"namespaces", "customresourcedefinitions", "clusterkopfpeerings"}


def rule_of(grant: rbac.Grant, watched: tuple[str, ...]) -> Rule:
    mode = (
        ("some namespaces" if watched else "all namespaces")
        if grant.resource in CLUSTER_SCOPED
        else ""
    )
    return (grant.api_group, grant.resource, grant.verb, mode)
