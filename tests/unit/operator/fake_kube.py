"""An in-memory stand-in for KubeClient: objects by path, and a log of every write.

Enough of the API server for one reconcile pass to run without a cluster: get, create (409
when taken, 422 where `reject` says so), JSON merge patch (a `/status` path patches its
object), delete, serves.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from finetune_operator.kube import ApiError


def merge(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeKube:
    """Objects keyed by their path; `writes` lists (method, path, body) in order."""

    def __init__(self, *, serves_rayjobs: bool = True) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str, Any]] = []
        self.serves_rayjobs = serves_rayjobs
        self.rejected: dict[str, dict[str, Any]] = {}

    def reject(self, collection: str, field: str, message: str) -> None:
        """Creates in `collection` fail as the API server fails an invalid object: 422 with
        a Status whose details.causes name the field."""
        self.rejected[collection] = {
            "kind": "Status",
            "status": "Failure",
            "reason": "Invalid",
            "code": 422,
            "message": f"is invalid: {field}: {message}",
            "details": {
                "causes": [{"reason": "FieldValueInvalid", "field": field, "message": message}]
            },
        }

    def put(self, path: str, obj: dict[str, Any]) -> None:
        self.objects[path] = copy.deepcopy(obj)

    def status_patches(self) -> list[dict[str, Any]]:
        return [
            body
            for method, path, body in self.writes
            if method == "PATCH" and path.endswith("/status")
        ]

    def events(self) -> list[dict[str, Any]]:
        return [
            body
            for method, path, body in self.writes
            if method == "POST" and path.endswith("/events")
        ]

    async def get(self, path: str) -> dict[str, Any] | None:
        found = self.objects.get(path)
        return copy.deepcopy(found) if found is not None else None

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("POST", path, copy.deepcopy(dict(body))))
        key = f"{path}/{body['metadata']['name']}"
        if path in self.rejected:
            raise ApiError(422, "POST", path, copy.deepcopy(self.rejected[path]))
        if key in self.objects:
            raise ApiError(409, "POST", path, {"message": "already exists"})
        self.objects[key] = copy.deepcopy(dict(body))
        return copy.deepcopy(self.objects[key])

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        self.writes.append(("PATCH", path, copy.deepcopy(dict(patch))))
        key = path.removesuffix("/status")
        if key not in self.objects:
            raise ApiError(404, "PATCH", path, {"message": "not found"})
        return copy.deepcopy(merge(self.objects[key], patch))

    async def delete(self, path: str) -> bool:
        self.writes.append(("DELETE", path, None))
        return self.objects.pop(path, None) is not None

    async def serves(self, group: str, version: str, plural: str) -> bool:
        return self.serves_rayjobs and (group, plural) == ("ray.io", "rayjobs")
