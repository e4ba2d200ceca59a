"""The small API client's paths and TLS set-up."""

from __future__ import annotations

import ssl

import kopf
import pytest
from finetune_operator.kube import _ssl_context, object_path


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
