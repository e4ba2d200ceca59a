"""The Kubernetes Pod Security Standards, "baseline" and "restricted" profiles, as a checker.

Written from the standard's page (kubernetes.io/docs/concepts/security/pod-security-standards):
one function per control, each returning what it found wrong. `violations(pod_spec)` runs all
of them; `pod_templates(obj)` finds the pod specs inside a Deployment, Pod or RayJob.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

Pod = dict[str, Any]

# Baseline: capabilities a container may add (restricted: NET_BIND_SERVICE only).
BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
    "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}  # fmt: skip
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip
APPARMOR_ANNOTATION = "container.apparmor.security.beta.kubernetes.io/"


def containers(pod: Pod) -> list[tuple[str, dict[str, Any]]]:
    """Every container of every kind, named for the messages."""
    found = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            found.append((f"{field}[{container.get('name')}]", container))
    return found


def _context(container: dict[str, Any]) -> dict[str, Any]:
    return container.get("securityContext") or {}


def _pod_context(pod: Pod) -> dict[str, Any]:
    return pod.get("securityContext") or {}


# Baseline ---------------------------------------------------------------------------------


def host_process(pod: Pod, _: dict[str, str]) -> list[str]:
    found = []
    if (_pod_context(pod).get("windowsOptions") or {}).get("hostProcess"):
        found.append("securityContext.windowsOptions.hostProcess is true")
    for name, container in containers(pod):
        if (_context(container).get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"{name}: windowsOptions.hostProcess is true")
    return found


def host_namespaces(pod: Pod, _: dict[str, str]) -> list[str]:
    return [f"{field} is true" for field in ("hostNetwork", "hostPID", "hostIPC") if pod.get(field)]


def privileged(pod: Pod, _: dict[str, str]) -> list[str]:
    return [f"{n}: privileged" for n, c in containers(pod) if _context(c).get("privileged")]


def baseline_capabilities(pod: Pod, _: dict[str, str]) -> list[str]:
    found = []
    for name, container in containers(pod):
        added = set((_context(container).get("capabilities") or {}).get("add") or [])
        found += [f"{name}: adds {cap}" for cap in sorted(added - BASELINE_CAPABILITIES)]
    return found


def host_path_volumes(pod: Pod, _: dict[str, str]) -> list[str]:
    return [
        f"volume {v.get('name')}: hostPath" for v in pod.get("volumes") or [] if "hostPath" in v
    ]


def host_ports(pod: Pod, _: dict[str, str]) -> list[str]:
    found = []
    for name, container in containers(pod):
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
    return found


def app_armor(pod: Pod, annotations: dict[str, str]) -> list[str]:
    found = []
    contexts = [("pod", _pod_context(pod))] + [(n, _context(c)) for n, c in containers(pod)]
    for name, context in contexts:
        kind = (context.get("appArmorProfile") or {}).get("type")
        if kind not in (None, "", "RuntimeDefault", "Localhost"):
            found.append(f"{name}: appArmorProfile {kind}")
    for key, value in annotations.items():
        if key.startswith(APPARMOR_ANNOTATION) and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"annotation {key}: {value}")
    return found


def se_linux(pod: Pod, _: dict[str, str]) -> list[str]:
    found = []
    contexts = [("pod", _pod_context(pod))] + [(n, _context(c)) for n, c in containers(pod)]
    for name, context in contexts:
        options = context.get("seLinuxOptions") or {}
        if options.get("type", "") not in SELINUX_TYPES:
            found.append(f"{name}: seLinuxOptions.type {options['type']}")
        found += [
            f"{name}: seLinuxOptions.{key} set" for key in ("user", "role") if options.get(key)
        ]
    return found


def proc_mount(pod: Pod, _: dict[str, str]) -> list[str]:
    return [
        f"{name}: procMount {_context(c)['procMount']}"
        for name, c in containers(pod)
        if _context(c).get("procMount", "Default") != "Default"
    ]


def seccomp_not_unconfined(pod: Pod, _: dict[str, str]) -> list[str]:
    contexts = [("pod", _pod_context(pod))] + [(n, _context(c)) for n, c in containers(pod)]
    return [
        f"{name}: seccompProfile Unconfined"
        for name, context in contexts
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined"
    ]


def sysctls(pod: Pod, _: dict[str, str]) -> list[str]:
    names = [s.get("name") for s in _pod_context(pod).get("sysctls") or []]
    return [f"sysctl {name}" for name in names if name not in SAFE_SYSCTLS]


# Restricted -------------------------------------------------------------------------------


def volume_types(pod: Pod, _: dict[str, str]) -> list[str]:
    found = []
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        found += [
            f"volume {volume.get('name')}: {kind}" for kind in sorted(kinds - RESTRICTED_VOLUMES)
        ]
    return found


def privilege_escalation(pod: Pod, _: dict[str, str]) -> list[str]:
    return [
        f"{name}: allowPrivilegeEscalation is not false"
        for name, c in containers(pod)
        if _context(c).get("allowPrivilegeEscalation") is not False
    ]


def run_as_non_root(pod: Pod, _: dict[str, str]) -> list[str]:
    pod_level = _pod_context(pod).get("runAsNonRoot")
    found = []
    for name, container in containers(pod):
        value = _context(container).get("runAsNonRoot", pod_level)
        if value is not True:
            found.append(f"{name}: runAsNonRoot is not true")
    return found


def run_as_user(pod: Pod, _: dict[str, str]) -> list[str]:
    contexts = [("pod", _pod_context(pod))] + [(n, _context(c)) for n, c in containers(pod)]
    return [f"{name}: runAsUser 0" for name, context in contexts if context.get("runAsUser") == 0]


def seccomp_restricted(pod: Pod, _: dict[str, str]) -> list[str]:
    allowed = ("RuntimeDefault", "Localhost")
    pod_type = (_pod_context(pod).get("seccompProfile") or {}).get("type")
    found = []
    if pod_type is not None and pod_type not in allowed:
        found.append(f"pod: seccompProfile {pod_type}")
    for name, container in containers(pod):
        kind = (_context(container).get("seccompProfile") or {}).get("type", pod_type)
        if kind not in allowed:
            found.append(f"{name}: seccompProfile is {kind or 'unset'}")
    return found


def restricted_capabilities(pod: Pod, _: dict[str, str]) -> list[str]:
    found = []
    for name, container in containers(pod):
        capabilities = _context(container).get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name}: capabilities.drop lacks ALL")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        found += [f"{name}: adds {cap}" for cap in sorted(added)]
    return found


Control = Callable[[Pod, dict[str, str]], list[str]]
BASELINE: dict[str, Control] = {
    "HostProcess": host_process,
    "Host Namespaces": host_namespaces,
    "Privileged Containers": privileged,
    "Capabilities": baseline_capabilities,
    "HostPath Volumes": host_path_volumes,
    "Host Ports": host_ports,
    "AppArmor": app_armor,
    "SELinux": se_linux,
    "/proc Mount Type": proc_mount,
    "Seccomp": seccomp_not_unconfined,
    "Sysctls": sysctls,
}
RESTRICTED: dict[str, Control] = {
    **BASELINE,
    "Volume Types": volume_types,
    "Privilege Escalation": privilege_escalation,
    "Running as Non-root": run_as_non_root,
    "Running as Non-root user": run_as_user,
    "Seccomp (restricted)": seccomp_restricted,
    "Capabilities (restricted)": restricted_capabilities,
}


def violations(pod: Pod, annotations: dict[str, str] | None = None) -> list[str]:
    """Every way this pod spec breaks the restricted profile, as `control: finding`."""
    found = []
    for control, check in RESTRICTED.items():
        found += [f"{control}: {finding}" for finding in check(pod, annotations or {})]
    return found


def pod_templates(obj: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, template with metadata and spec) for each pod an object makes."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    spec = obj.get("spec") or {}
    if kind == "Pod":
        yield f"Pod/{name}", {"metadata": obj["metadata"], "spec": spec}
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        yield f"{kind}/{name}", spec["template"]
    elif kind == "RayJob":
        cluster = spec["rayClusterSpec"]
        yield f"RayJob/{name} head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs") or []:
            yield f"RayJob/{name} {group['groupName']}", group["template"]
        if "submitterPodTemplate" in spec:
            yield f"RayJob/{name} submitter", spec["submitterPodTemplate"]


def template_violations(obj: dict[str, Any]) -> list[str]:
    """violations() over every pod template of an object, each prefixed with where it is."""
    found = []
    for where, template in pod_templates(obj):
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        found += [f"{where}: {v}" for v in violations(template["spec"], annotations)]
    return found
