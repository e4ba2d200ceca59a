"""The quiet environment as each library reads it: Ray, huggingface_hub and tldextract."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from finetune_operator import no_phone_home

# Run in a fresh interpreter: huggingface_hub and tldextract read the environment at import.
LIBRARY_VIEW = """
import json
import huggingface_hub.constants as hub
import tldextract.tldextract as tld
from ray._common.usage import usage_lib

print(json.dumps({
    "hub_telemetry_off": hub.HF_HUB_DISABLE_TELEMETRY,
    "hub_offline": hub.HF_HUB_OFFLINE,
    "suffix_list_urls": list(tld.TLD_EXTRACTOR.suffix_list_urls),
    "ray_usage_stats": usage_lib.usage_stats_enabled(),
}))
"""


def library_view(environment: dict[str, str]) -> dict[str, object]:
    names = [*no_phone_home.quiet_environment(None), "FINETUNE_TELEMETRY"]
    env = {k: v for k, v in os.environ.items() if k not in names} | environment
    result = subprocess.run(
        [sys.executable, "-c", LIBRARY_VIEW], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_each_library_sees_telemetry_off_and_the_hub_offline():
    view = library_view(no_phone_home.quiet_environment(None))
    assert view == {
        "hub_telemetry_off": True,
        "hub_offline": True,
        "suffix_list_urls": [],  # the bundled snapshot, never publicsuffix.org
        "ray_usage_stats": False,
    }


def test_without_it_they_would_phone_home():
    """The defaults this module exists to change (if a library changes them, we want to know)."""
    view = library_view({})
    assert view["hub_telemetry_off"] is False
    assert view["suffix_list_urls"] and all(
        url.startswith("https://") for url in view["suffix_list_urls"]
    )


def test_a_ray_start_cluster_sends_no_disabled_report(monkeypatch):
    """With usage stats off, a cluster started by `ray start` (KubeRay's) still posts a
    "disabled" report; our report URL makes that post fail before any socket opens."""
    import requests
    from ray._common.usage import usage_lib

    for name, value in no_phone_home.TELEMETRY_OFF.items():
        monkeypatch.setenv(name, value)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    assert not usage_lib.usage_stats_enabled()
    with pytest.raises(requests.exceptions.InvalidSchema):
        usage_lib.UsageReportClient().report_usage_data(
            usage_lib._usage_stats_report_url(), usage_lib.generate_disabled_report_data()
        )
