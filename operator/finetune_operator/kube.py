"""A small async Kubernetes client for what kopf does not do: children, status, Events.

kopf brings its own connection (login handlers); this client reuses the same
`kopf.ConnectionInfo`, so the operator has one identity and one set of credentials.
"""

from __future__ import annotations

import base64
import ssl
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

Login = Callable[[], kopf.ConnectionInfo]


class ApiError(Exception):
    """A response from the API server other than success; `status` is its HTTP code."""

    def __init__(self, status: int, method: str, path: str, body: Any) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: HTTP {status}: {message}")


def object_path(
    group: str,
    version: str,
    plural: str,
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
) -> str:
    """/api/v1/... for the core group, /apis/group/version/... otherwise."""
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if not info.server.startswith("https"):
        return False
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif info.ca_data or info.ca_path:
        cadata = info.ca_data
        if isinstance(cadata, bytes):
            cadata = cadata.decode()
        if cadata and "BEGIN CERTIFICATE" not in cadata:
            cadata = base64.b64decode(cadata).decode()  # kubeconfigs carry it base64-encoded
        cafile = str(info.ca_path) if info.ca_path else None
        context = ssl.create_default_context(cafile=cafile, cadata=cadata or None)
    else:
        context = ssl.create_default_context()
    if info.certificate_path or info.certificate_data:
        with tempfile.TemporaryDirectory() as folder:
            cert = _as_file(info.certificate_path, info.certificate_data, folder, "cert.pem")
            key = _as_file(info.private_key_path, info.private_key_data, folder, "key.pem")
            if cert:
                context.load_cert_chain(cert, key)
    return context


def _as_file(path: Any, data: str | bytes | None, folder: str, name: str) -> str | None:
    if path:
        return str(path)
    if not data:
        return None
    raw = data.encode() if isinstance(data, str) else data
    if b"-----BEGIN" not in raw:
        raw = base64.b64decode(raw)
    target = f"{folder}/{name}"
    with open(target, "wb") as handle:
        handle.write(raw)
    return target


class KubeClient:
    """get / create / merge-patch / delete of JSON objects; one aiohttp session."""

    def __init__(self, login: Login, *, timeout: float = 30.0) -> None:
        self._login = login
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._info: kopf.ConnectionInfo | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _connect(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._info = self._login()
            headers = {"Accept": "application/json"}
            if self._info.token:
                headers["Authorization"] = f"{self._info.scheme or 'Bearer'} {self._info.token}"
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self._info), limit=50)
            auth = None
            if self._info.username and self._info.password:
                auth = aiohttp.BasicAuth(self._info.username, self._info.password)
            self._session = aiohttp.ClientSession(
                base_url=self._info.server.rstrip("/") + "/",
                headers=headers,
                connector=connector,
                timeout=self._timeout,
                auth=auth,
            )
        return self._session

    async def request(
        self, method: str, path: str, *, body: Any = None, content_type: str | None = None
    ) -> Any:
        for attempt in range(2):
            session = self._connect()
            headers = {"Content-Type": content_type} if content_type else None
            async with session.request(
                method, path.lstrip("/"), json=body, headers=headers
            ) as response:
                payload = await _read_json(response)
                if response.status == 401 and attempt == 0:
                    await (
                        self.close()
                    )  # credentials rotated (service-account tokens do): log in again
                    continue
                if response.status >= 400:
                    raise ApiError(response.status, method, path, payload)
                return payload
        raise AssertionError("unreachable")  # pragma: no cover

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            result: dict[str, Any] = await self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return result

    async def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", path, body=dict(body))
        return result

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request(
            "PATCH", path, body=dict(patch), content_type="application/merge-patch+json"
        )
        return result

    async def delete(self, path: str) -> bool:
        """True when deleted, False when it was already gone."""
        try:
            await self.request("DELETE", path, body={"propagationPolicy": "Background"})
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

    async def serves(self, group: str, version: str, plural: str) -> bool:
        """Whether the API server serves this resource (e.g. KubeRay's CRD is installed)."""
        try:
            listing = await self.request("GET", f"/apis/{group}/{version}")
        except ApiError as error:
            if error.status in (403, 404, 503):
                return False  # 503: an aggregated API or a CRD that is not established yet
            raise
        return any(r.get("name") == plural for r in (listing or {}).get("resources", []))


async def _read_json(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    if not text:
        return None
    try:
        return await response.json(content_type=None)
    except ValueError:
        return text
