"""The Ray head pod of a RayJob, made on this machine as the kubelet would make it.

Volumes are read through the API (ConfigMaps and Secrets) and written to folders; every
mount path of the head container then lives under the attempt's own root folder, and what
the entrypoint and the environment say about those paths is rewritten to point there.
`persistentVolumeClaim` volumes are folders under the work directory that outlive every
attempt and every RayJob (shared storage: checkpoints survive a new cluster).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from finetune_operator.kube import KubeClient, object_path

# Where the pod's environment does not reach: the stand-in's own API access, and the Ray
# address, so that the trainer starts its own local Ray ("one attempt, one cluster").
HOST_ONLY_ENV = ("KUBECONFIG", "RAY_ADDRESS")


class PodNotReady(Exception):
    """The kubelet would wait (e.g. a ConfigMap or Secret the pod needs is missing)."""


@dataclasses.dataclass(frozen=True)
class HeadPod:
    folder: Path  # DIR/<namespace>/<rayjob>/: the working directory of the entrypoint
    root: Path  # the container's filesystem as far as its mounts go
    command: str  # the RayJob's entrypoint, its mount paths rewritten
    env: dict[str, str]


def claim_folder(workdir: Path, namespace: str, claim: str) -> Path:
    """The persistent folder behind a PersistentVolumeClaim (tests fill it before a run)."""
    return workdir / "persistentvolumes" / namespace / claim


def head_container(rayjob: Mapping[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """KubeRay runs Ray in the head template's first container."""
    template = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    return template["containers"][0], list(template.get("volumes") or [])


async def make_head_pod(client: KubeClient, rayjob: Mapping[str, Any], workdir: Path) -> HeadPod:
    """Materialise the head pod's volumes and environment under DIR/<namespace>/<rayjob>/."""
    namespace = rayjob["metadata"].get("namespace") or "default"
    folder = workdir / namespace / rayjob["metadata"]["name"]
    root = folder / "root"
    shutil.rmtree(root, ignore_errors=True)  # a new pod: nothing of the last one's mounts
    shutil.rmtree(folder / "volumes", ignore_errors=True)
    container, volumes = head_container(rayjob)
    by_name = {volume["name"]: volume for volume in volumes}
    mounts: list[str] = []
    for mount in container.get("volumeMounts") or []:
        volume = by_name.get(mount["name"])
        if volume is None:
            raise PodNotReady(f"volumeMount {mount['name']!r} names no volume of the pod")
        source = await _volume_folder(client, namespace, volume, folder, workdir)
        if mount.get("subPath"):
            source = source / mount["subPath"]
        target = root / mount["mountPath"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source.resolve(), target_is_directory=True)
        mounts.append(mount["mountPath"].rstrip("/"))
    rewrite = PathRewriter(mounts, root)
    env = {k: v for k, v in os.environ.items() if k not in HOST_ONLY_ENV}  # the image's
    for key, value in (await _container_environment(client, namespace, container)).items():
        env[key] = rewrite.text(value)
    return HeadPod(folder, root, rewrite.text(rayjob["spec"]["entrypoint"]), env)


async def _volume_folder(
    client: KubeClient, namespace: str, volume: Mapping[str, Any], folder: Path, workdir: Path
) -> Path:
    target = folder / "volumes" / volume["name"]
    if "persistentVolumeClaim" in volume:
        claim = claim_folder(workdir, namespace, volume["persistentVolumeClaim"]["claimName"])
        claim.mkdir(parents=True, exist_ok=True)
        return claim
    if "emptyDir" in volume:
        target.mkdir(parents=True)
        return target
    if "configMap" in volume:
        source = volume["configMap"]
        found = await _read(client, "configmaps", namespace, source["name"])
        files = dict(found.get("data") or {})
        files |= {k: base64.b64decode(v) for k, v in (found.get("binaryData") or {}).items()}
    elif "secret" in volume:
        source = volume["secret"]
        found = await _read(client, "secrets", namespace, source["secretName"])
        files = {k: base64.b64decode(v) for k, v in (found.get("data") or {}).items()}
        files |= dict(found.get("stringData") or {})
    else:
        raise PodNotReady(f"volume {volume['name']!r}: this stand-in mounts configMap, secret, "
                          "persistentVolumeClaim and emptyDir volumes only")  # fmt: skip
    items = source.get("items")
    paths = {item["key"]: item["path"] for item in items} if items else {k: k for k in files}
    target.mkdir(parents=True)
    for key, relative in paths.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        content = files[key]
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return target


async def _read(client: KubeClient, plural: str, namespace: str, name: str) -> dict[str, Any]:
    found = await client.get(object_path("", "v1", plural, namespace, name))
    if found is None:
        raise PodNotReady(f"{plural[:-1]} {namespace}/{name} not found")
    return found


async def _container_environment(
    client: KubeClient, namespace: str, container: Mapping[str, Any]
) -> dict[str, str]:
    """envFrom in order, then env: what the kubelet adds to the image's environment."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        if "secretRef" in source:
            found = await _read(client, "secrets", namespace, source["secretRef"]["name"])
            data = {k: base64.b64decode(v).decode() for k, v in (found.get("data") or {}).items()}
        else:
            found = await _read(client, "configmaps", namespace, source["configMapRef"]["name"])
            data = dict(found.get("data") or {})
        env |= {prefix + key: value for key, value in data.items()}
    for variable in container.get("env") or []:
        if "value" in variable:
            env[variable["name"]] = str(variable["value"])
        elif "valueFrom" in variable:
            env[variable["name"]] = await _value_from(client, namespace, variable["valueFrom"])
    return env


async def _value_from(client: KubeClient, namespace: str, source: Mapping[str, Any]) -> str:
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        found = await _read(client, "secrets", namespace, ref["name"])
        return base64.b64decode((found.get("data") or {})[ref["key"]]).decode()
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        found = await _read(client, "configmaps", namespace, ref["name"])
        return str((found.get("data") or {})[ref["key"]])
    raise PodNotReady(f"env valueFrom {sorted(source)}: not supported by this stand-in")


class PathRewriter:
    """Absolute paths at, under or above a mount path move under the attempt's root.

    "Above" covers a variable naming the folder the mounts share (FINETUNE_PVC_ROOT=/mnt/pvc
    with claims mounted at /mnt/pvc/<claim>); "/" itself never moves.
    """

    TOKEN = re.compile(r"(?<![^\s=:'\"])/[^\s:'\"]*")

    def __init__(self, mount_paths: Iterable[str], root: Path) -> None:
        self.mounts = [m for m in mount_paths if m not in ("", "/")]
        self.root = root

    def _moves(self, path: str) -> bool:
        bare = path.rstrip("/")
        return bool(bare) and any(
            bare == m or bare.startswith(m + "/") or m.startswith(bare + "/") for m in self.mounts
        )

    def _move(self, match: re.Match[str]) -> str:
        path = match.group(0)
        return f"{self.root}{path}" if self._moves(path) else path

    def text(self, text: str) -> str:
        return self.TOKEN.sub(self._move, text)
