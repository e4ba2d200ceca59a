"""The small API client against kmock's emulator, a re-login on 401, and mutual TLS."""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import kopf
import pytest
from aiohttp import web
from finetune_operator.kube import ApiError, KubeClient, object_path

from tests.certificates import Certificates, make_certificates
from tests.factories import MakeJob
from tests.integration.operator.operator_cluster import NAMESPACE, Cluster, free_port

pytestmark = pytest.mark.integration

CONFIGMAPS = object_path("", "v1", "configmaps", "default")
JOBS = object_path("finetune.io", "v1alpha1", "finetunejobs", "default")


def configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}}


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[KubeClient]:
    async with opened(lambda: kopf.ConnectionInfo(server=cluster.url)) as client:
        yield client


async def test_get_returns_the_object_or_none(client: KubeClient) -> None:
    assert await client.get(f"{CONFIGMAPS}/spec") is None
    await client.create(CONFIGMAPS, configmap("spec"))
    found = await client.get(f"{CONFIGMAPS}/spec")
    assert found is not None and found["data"] == {"a": "1"}


async def test_create_returns_the_object_and_a_second_create_is_a_409(client: KubeClient) -> None:
    created = await client.create(CONFIGMAPS, configmap("spec"))
    assert created["metadata"]["name"] == "spec"
    with pytest.raises(ApiError) as raised:
        await client.create(CONFIGMAPS, configmap("spec"))
    assert raised.value.status == 409
    assert isinstance(raised.value.body, dict) and raised.value.body["code"] == 409


async def test_merge_patch_on_the_status_subresource(client: KubeClient, cluster: Cluster) -> None:
    await client.create(JOBS, MakeJob.operator("llama", namespace=NAMESPACE).stored().obj())
    patched = await client.merge_patch(f"{JOBS}/llama/status", {"status": {"phase": "Running"}})
    assert patched["status"]["phase"] == "Running"
    await client.merge_patch(f"{JOBS}/llama/status", {"status": {"reason": "Started"}})
    assert cluster.status("llama") == {"phase": "Running", "reason": "Started"}


async def test_delete_says_whether_there_was_something_to_delete(client: KubeClient) -> None:
    await client.create(CONFIGMAPS, configmap("spec"))
    assert await client.delete(f"{CONFIGMAPS}/spec") is True
    assert await client.delete(f"{CONFIGMAPS}/spec") is False
    assert await client.get(f"{CONFIGMAPS}/spec") is None


async def test_serves_tells_which_resources_the_server_has(
    client: KubeClient, cluster: Cluster
) -> None:
    assert await client.serves("finetune.io", "v1alpha1", "finetunejobs")
    assert not await client.serves("ray.io", "v1", "rayjobs")  # the group is unknown: 404
    cluster.install_kuberay()
    assert await client.serves("ray.io", "v1", "rayjobs")
    assert not await client.serves("ray.io", "v1", "rayclusters")


Handler = Callable[[web.Request], Awaitable[web.Response]]


@contextlib.asynccontextmanager
async def answering(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    """An API server on 127.0.0.1 that serves one ConfigMap with `handler`; yields its URL."""
    app = web.Application()
    app.router.add_get(f"{CONFIGMAPS}/spec", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def opened(login: Callable[[], kopf.ConnectionInfo]) -> AsyncIterator[KubeClient]:
    client = KubeClient(login, timeout=10)
    try:
        yield client
    finally:
        await client.close()


def token_logins(server: str) -> tuple[Callable[[], kopf.ConnectionInfo], list[str]]:
    """A login that hands out token-1, token-2, ... as a rotating service account would."""
    issued: list[str] = []

    def login() -> kopf.ConnectionInfo:
        issued.append(f"token-{len(issued) + 1}")
        return kopf.ConnectionInfo(server=server, token=issued[-1])

    return login, issued


async def test_a_401_logs_in_again_and_retries_once() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] == "Bearer token-1":
            return web.json_response({"kind": "Status", "code": 401}, status=401)
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": "spec"}})

    async with answering(handler) as server:
        login, issued = token_logins(server)
        async with opened(login) as client:
            found = await client.get(f"{CONFIGMAPS}/spec")
            assert found is not None and found["metadata"]["name"] == "spec"
            assert seen == ["Bearer token-1", "Bearer token-2"]
            await client.get(f"{CONFIGMAPS}/spec")  # the new session keeps the new token
    assert seen[-1] == "Bearer token-2" and issued == ["token-1", "token-2"]


async def test_a_second_401_in_a_row_is_an_error() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)

    async with answering(handler) as server:
        login, issued = token_logins(server)
        async with opened(login) as client:
            with pytest.raises(ApiError, match="HTTP 401: Unauthorized") as raised:
                await client.get(f"{CONFIGMAPS}/spec")
    assert raised.value.status == 401 and issued == ["token-1", "token-2"]


async def test_basic_auth_from_a_username_and_password() -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        return web.json_response({"kind": "ConfigMap"})

    async with answering(handler) as server:
        info = kopf.ConnectionInfo(server=server, username="u", password="p")
        async with opened(lambda: info) as client:
            await client.get(f"{CONFIGMAPS}/spec")
    assert seen == [f"Basic {base64.b64encode(b'u:p').decode()}"]


def server_tls(certificates: Certificates, folder: Path) -> ssl.SSLContext:
    """TLS for the server, which insists on a client certificate from the same CA."""
    for name, pem in (
        ("ca", certificates.ca.cert),
        ("cert", certificates.server.cert),
        ("key", certificates.server.key),
    ):
        (folder / f"{name}.pem").write_bytes(pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=folder / "ca.pem")
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


async def test_mutual_tls_with_certificates_given_as_data(tmp_path: Path) -> None:
    certificates = make_certificates()

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(rdn[0] for rdn in (peer or {}).get("subject", ()))
        return web.json_response({"kind": "ConfigMap", "client": subject.get("commonName")})

    async with answering(handler, server_tls(certificates, tmp_path)) as server:
        info = kopf.ConnectionInfo(
            server=server,
            ca_data=base64.b64encode(certificates.ca.cert),  # as kubeconfigs carry it
            certificate_data=certificates.client.cert.decode(),
            private_key_data=base64.b64encode(certificates.client.key),
        )
        async with opened(lambda: info) as client:
            found = await client.get(f"{CONFIGMAPS}/spec")
    assert found == {"kind": "ConfigMap", "client": "finetune-operator"}
