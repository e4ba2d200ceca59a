"""Restricted Pod Security for every pod a RayJob of ours makes, and the checker that says so."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from finetune_operator import pod_security
from finetune_operator.builders import build_rayjob
from finetune_operator.settings import Settings
from finetune_operator.validation import load_job_file

from tests import pod_security_standards as pss
from tests.factories import EXAMPLES, MakeJob
from tests.unit.operator.test_operator_builders import COMBINATIONS, head_of, pod_templates

SETTINGS = Settings(trainer_image="registry.local/trainer:1")
MEMORY = [
    {"spec.resources.memoryPerWorker": "1.5Gi"},
    {"spec.resources.memoryPerWorker": "500M"},
    {"spec.resources.memoryPerWorker": "2Ti"},
]


@pytest.mark.parametrize("overrides", COMBINATIONS + MEMORY)
def test_every_generated_rayjob_passes_the_restricted_profile(overrides: dict[str, Any]) -> None:
    rayjob = build_rayjob(MakeJob.operator().set_all(overrides).typed(), SETTINGS)
    assert len(list(pss.pod_templates(rayjob))) == 3
    assert pss.template_violations(rayjob) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_the_restricted_profile(path) -> None:
    rayjob = build_rayjob(load_job_file(path), SETTINGS)
    assert pss.template_violations(rayjob) == []


def test_pods_run_as_the_configured_trainer_user_without_an_api_token() -> None:
    settings = Settings(trainer_uid=2000, trainer_gid=3000)
    rayjob = build_rayjob(MakeJob.operator().typed(), settings)
    for template in pod_templates(rayjob).values():
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": 2000,
            "runAsGroup": 3000,
            "fsGroup": 3000,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        (container,) = pod["containers"]
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_default_user_is_the_ray_images_own() -> None:
    context = pod_security.pod_security_context(Settings())
    assert (context["runAsUser"], context["runAsGroup"]) == (1000, 100)


@pytest.mark.parametrize(
    ("memory", "size"),
    [("64Gi", "32768Mi"), ("1.5Gi", "768Mi"), ("500M", "238Mi"), ("8Gi", "4096Mi"), ("1", "1Mi")],
)
def test_shm_is_half_the_memory(memory: str, size: str) -> None:
    assert pod_security.shm_size_limit(memory) == size


def test_head_and_workers_get_an_in_memory_dev_shm_and_the_submitter_none() -> None:
    rayjob = build_rayjob(
        MakeJob.operator().set("spec.resources.memoryPerWorker", "16Gi").typed(), SETTINGS
    )
    templates = pod_templates(rayjob)
    expected = {"head": "4096Mi", "worker": "8192Mi"}  # head: half of Settings.head_memory (8Gi)
    for role, size in expected.items():
        pod = templates[role]["spec"]
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size}} in pod[
            "volumes"
        ]
        assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]
    submitter = templates["submitter"]["spec"]
    assert "volumes" not in submitter and "volumeMounts" not in submitter["containers"][0]


def test_the_dashboard_host_is_left_to_kuberay() -> None:
    # KubeRay sets dashboard-host 0.0.0.0 itself; K8sJobMode's submitter needs it.
    params = head_of(build_rayjob(MakeJob.operator().typed(), SETTINGS))["rayStartParams"]
    assert "dashboard-host" not in params


def test_scanner_exceptions_name_each_check_once_with_a_reason() -> None:
    annotations = pod_security.scanner_annotations()
    checks = [value.split("=", 1)[0] for value in annotations.values()]
    assert sorted(checks) == sorted(pod_security.SCANNER_EXCEPTIONS)
    assert all(len(value.split("=", 1)[1]) > 20 for value in annotations.values())
    rayjob = build_rayjob(MakeJob.operator().typed(), SETTINGS)
    for template in pod_templates(rayjob).values():
        assert template["metadata"]["annotations"] == annotations


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"FINETUNE_TRAINER_UID": "1234"}, "trainer_uid", 1234),
        ({"FINETUNE_TRAINER_GID": "0"}, "trainer_gid", 0),
    ],
)
def test_trainer_user_from_the_environment(env: dict[str, str], field: str, value: int) -> None:
    assert getattr(Settings.from_env(env), field) == value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FINETUNE_TRAINER_UID": "0"}, "FINETUNE_TRAINER_UID must be at least 1"),
        ({"FINETUNE_TRAINER_UID": "ray"}, "FINETUNE_TRAINER_UID must be a whole number"),
        ({"FINETUNE_TRAINER_GID": "-1"}, "FINETUNE_TRAINER_GID must be at least 0"),
    ],
)
def test_a_root_or_malformed_trainer_user_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


# The checker itself: each control catches what it is there for.

COMPLIANT: dict[str, Any] = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    },
    "containers": [
        {
            "name": "main",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
    ],
    "volumes": [
        {"name": "data", "persistentVolumeClaim": {"claimName": "x"}},
        {"name": "tmp", "emptyDir": {}},
    ],
}


def container_set(field: str, value: Any) -> dict[str, Any]:
    return {
        "containers": [
            {
                **COMPLIANT["containers"][0],
                "securityContext": {**COMPLIANT["containers"][0]["securityContext"], field: value},
            }
        ]
    }


BREAKS: list[tuple[str, dict[str, Any]]] = [
    (
        "HostProcess",
        {
            "securityContext": {
                **COMPLIANT["securityContext"],
                "windowsOptions": {"hostProcess": True},
            }
        },
    ),
    ("Host Namespaces", {"hostNetwork": True}),
    ("Host Namespaces", {"hostPID": True}),
    ("Host Namespaces", {"hostIPC": True}),
    ("Privileged Containers", container_set("privileged", True)),
    ("Capabilities", container_set("capabilities", {"drop": ["ALL"], "add": ["SYS_ADMIN"]})),
    (
        "Capabilities (restricted)",
        container_set("capabilities", {"drop": ["ALL"], "add": ["CHOWN"]}),
    ),
    ("Capabilities (restricted)", container_set("capabilities", {"drop": ["NET_RAW"]})),
    ("HostPath Volumes", {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
    ("Volume Types", {"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}),
    (
        "Host Ports",
        {
            "containers": [
                {**COMPLIANT["containers"][0], "ports": [{"containerPort": 80, "hostPort": 80}]}
            ]
        },
    ),
    ("AppArmor", container_set("appArmorProfile", {"type": "Unconfined"})),
    ("SELinux", container_set("seLinuxOptions", {"type": "spc_t"})),
    ("SELinux", container_set("seLinuxOptions", {"user": "system_u"})),
    ("/proc Mount Type", container_set("procMount", "Unmasked")),
    ("Seccomp", container_set("seccompProfile", {"type": "Unconfined"})),
    ("Seccomp (restricted)", {"securityContext": {"runAsNonRoot": True}}),
    (
        "Sysctls",
        {
            "securityContext": {
                **COMPLIANT["securityContext"],
                "sysctls": [{"name": "kernel.msgmax", "value": "1"}],
            }
        },
    ),
    ("Privilege Escalation", container_set("allowPrivilegeEscalation", True)),
    (
        "Privilege Escalation",
        {"containers": [{"name": "main", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]},
    ),
    ("Running as Non-root", container_set("runAsNonRoot", False)),
    ("Running as Non-root", {"securityContext": {"seccompProfile": {"type": "RuntimeDefault"}}}),
    ("Running as Non-root user", container_set("runAsUser", 0)),
    (
        "Privileged Containers",
        {"initContainers": [{"name": "init", "securityContext": {"privileged": True}}]},
    ),
]


def test_the_compliant_pod_passes() -> None:
    assert pss.violations(COMPLIANT) == []


@pytest.mark.parametrize(("control", "change"), BREAKS)
def test_each_control_catches_its_violation(control: str, change: dict[str, Any]) -> None:
    pod = {**copy.deepcopy(COMPLIANT), **copy.deepcopy(change)}
    found = pss.violations(pod)
    assert any(v.startswith(f"{control}: ") for v in found), found


def test_apparmor_annotations_are_checked() -> None:
    key = "container.apparmor.security.beta.kubernetes.io/main"
    assert pss.violations(COMPLIANT, {key: "localhost/profile"}) == []
    assert pss.violations(COMPLIANT, {key: "unconfined"}) == [
        f"AppArmor: annotation {key}: unconfined"
    ]
