"""A small async Kubernetes client for what kopf does not do: children, status, Events.

kopf brings its own connection (login handlers); this client takes the same
`kopf.ConnectionInfo` and lets kopf turn it into TLS and Authorization headers, so the
operator has one identity, one set of credentials and one way of using them.

Why not kubernetes_asyncio: fed with kopf's credentials it brings no token rotation (its
own in-cluster loader has that; a re-login on 401, as here, does the same), no retries
(its aiohttp client has none), wants CA and client-certificate data written to files, and
once it is installed kopf imports its ~850 generated modules at start-up, which about
doubles the operator's import time and memory.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import kopf

from finetune_operator import __version__

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
    """kopf's TLS set-up (CA and client certificates as paths, PEM or base64); none for http."""
    return info.as_ssl_context() if info.server.startswith("https") else False


# Named in the API server's audit log (and told apart from other clients by the RBAC check).
USER_AGENT = f"finetune-operator/{__version__}"


class KubeClient:
    """get / create / merge-patch / delete of JSON objects; one aiohttp session."""

    def __init__(
        self, login: Login, *, timeout: float = 30.0, user_agent: str = USER_AGENT
    ) -> None:
        self._login = login
        self._user_agent = user_agent
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _connect(self) -> aiohttp.ClientSession:
        if self._session is None:
            info = self._login()
            self._session = aiohttp.ClientSession(
                base_url=info.server.rstrip("/") + "/",
                # Named in the API server's audit log, as kopf names its own requests.
                headers={
                    "Accept": "application/json",
                    "User-Agent": self._user_agent,
                    **info.as_http_headers(),
                },
                connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=50),
                timeout=self._timeout,
                proxy=info.proxy_url,
                trust_env=info.trust_env,
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
                    # Credentials rotate (service-account tokens do): log in again, once.
                    await self.close()
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
