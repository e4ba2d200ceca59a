"""The small API client's paths and TLS set-up."""

from __future__ import annotations

import base64
import ssl

import kopf
import pytest
from finetune_operator.kube import _ssl_context, object_path

from tests.certificates import Certificates, make_certificates


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (("", "v1", "configmaps", "ns"), "/api/v1/namespaces/ns/configmaps"),
        (("", "v1", "events", "ns", "e1"), "/api/v1/namespaces/ns/events/e1"),
        (("ray.io", "v1", "rayjobs", "ns", "j"), "/apis/ray.io/v1/namespaces/ns/rayjobs/j"),
        (
            ("finetune.io", "v1alpha1", "finetunejobs", "ns", "j", "status"),
            "/apis/finetune.io/v1alpha1/namespaces/ns/finetunejobs/j/status",
        ),
        (("finetune.io", "v1alpha1", "finetunejobs"), "/apis/finetune.io/v1alpha1/finetunejobs"),
    ],
)
def test_object_path(args, path) -> None:
    assert object_path(*args) == path


def test_plain_http_needs_no_tls() -> None:
    assert _ssl_context(kopf.ConnectionInfo(server="http://127.0.0.1:8080")) is False


def test_insecure_skips_verification() -> None:
    context = _ssl_context(kopf.ConnectionInfo(server="https://k8s:6443", insecure=True))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE


def test_https_verifies_by_default() -> None:
    context = _ssl_context(kopf.ConnectionInfo(server="https://k8s:6443"))
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED


@pytest.fixture(scope="module")
def certificates() -> Certificates:
    return make_certificates()


def trusted_names(context: ssl.SSLContext) -> list[str]:
    return [
        dict(rdn[0] for rdn in cert["subject"])["commonName"] for cert in context.get_ca_certs()
    ]


@pytest.mark.parametrize("encode", [bytes.decode, base64.b64encode], ids=["pem", "base64"])
def test_ca_data_is_trusted_as_pem_or_base64(certificates, encode) -> None:
    info = kopf.ConnectionInfo(server="https://k8s:6443", ca_data=encode(certificates.ca.cert))
    context = _ssl_context(info)
    assert isinstance(context, ssl.SSLContext)
    assert trusted_names(context) == ["test-ca"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ca_path_is_trusted(certificates, tmp_path) -> None:
    (tmp_path / "ca.pem").write_bytes(certificates.ca.cert)
    context = _ssl_context(kopf.ConnectionInfo(server="https://k8s", ca_path=tmp_path / "ca.pem"))
    assert isinstance(context, ssl.SSLContext)
    assert trusted_names(context) == ["test-ca"]


def test_insecure_skips_verification_even_with_a_ca(certificates) -> None:
    info = kopf.ConnectionInfo(server="https://k8s", ca_data=certificates.ca.cert, insecure=True)
    context = _ssl_context(info)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname


@pytest.mark.parametrize("encode", [bytes.decode, base64.b64encode], ids=["pem", "base64"])
def test_client_certificate_data_is_loaded(certificates, encode) -> None:
    client = certificates.client
    info = kopf.ConnectionInfo(
        server="https://k8s", certificate_data=encode(client.cert), private_key_data=client.key
    )
    assert isinstance(_ssl_context(info), ssl.SSLContext)
    # Loading is real, not deferred: a key that does not belong to the certificate fails now.
    wrong_key = kopf.ConnectionInfo(
        server="https://k8s",
        certificate_data=encode(client.cert),
        private_key_data=certificates.server.key,
    )
    with pytest.raises(ssl.SSLError):
        _ssl_context(wrong_key)
