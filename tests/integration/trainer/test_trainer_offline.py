"""Nothing leaves the building: a whole `finetune run` inside a network namespace with no
route out (loopback only), with every Python process it starts watched for attempts.

`unshare -n` gives the run a network of its own with only `lo`: a library that must reach
the internet at first use (a suffix list, a model, a usage report) fails the run or hangs
it. An audit hook, installed through sitecustomize in the driver, the local Ray and every
Ray worker, records each attempt to connect or send to an address that is not loopback,
and each name looked up, so an attempt that a library would quietly survive fails too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.factories import MakeJob, write_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Every variable the run should set for itself: the test starts it without them.
QUIET_NAMES = (
    "RAY_USAGE_STATS_ENABLED", "RAY_USAGE_STATS_REPORT_URL", "HF_HUB_DISABLE_TELEMETRY", "DO_NOT_TRACK",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
)  # fmt: skip
ATTEMPTS_ENV = "FINETUNE_TEST_NETWORK_ATTEMPTS"
HOOKED_ENV = "FINETUNE_TEST_HOOKED"  # one line per process that installed the hook
# Ray's dashboard process asks which cloud it is on once at start, whatever the usage
# settings (Ray has no switch for it): the link-local metadata address, which no router
# forwards, and GCP's metadata name. It sends nothing of ours; the README says so.
# Any other attempt, or this one from another process, fails the test.
RAY_CLOUD_PROBE = {"169.254.169.254", "metadata.google.internal"}


def outside_attempts(log: Path) -> list[dict[str, object]]:
    entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [
        entry
        for entry in entries
        if not (entry["host"] in RAY_CLOUD_PROBE and "dashboard" in " ".join(entry["argv"]))
    ]


# Loaded by every Python process of the run (PYTHONPATH): records, never blocks, so that
# what a library would do is seen even where the namespace would make it fail.
SITECUSTOMIZE = """
import ipaddress, json, os, socket, sys

_LOG = os.environ["FINETUNE_TEST_NETWORK_ATTEMPTS"]
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", socket.gethostname()}
with open(os.environ["FINETUNE_TEST_HOOKED"], "a") as hooked:
    hooked.write(json.dumps(sys.argv[:2]) + "\\n")


def _outside(host):
    if host is None or host in ("", b"") or host in _LOCAL_NAMES:
        return False
    if isinstance(host, bytes):
        host = host.decode()
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return True  # a name to look up elsewhere
    return not (address.is_loopback or address.is_unspecified)


def _record(event, args):
    if event in ("socket.connect", "socket.sendto", "socket.sendmsg"):
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None  # AF_UNIX: a path
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if _outside(host):
        with open(_LOG, "a") as log:
            log.write(json.dumps({"pid": os.getpid(), "event": event, "host": str(host),
                                  "argv": sys.argv[:2]}) + "\\n")


sys.addaudithook(_record)
"""


def namespace_command() -> list[str] | None:
    """`unshare -n` (with a user namespace when not root), or None when it is not permitted."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    command = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    probe = subprocess.run([*command, "ip", "link", "set", "lo", "up"], capture_output=True)
    return command if probe.returncode == 0 else None


@pytest.mark.timeout(900)
def test_a_whole_run_completes_with_no_route_out_and_no_attempt_to_leave(job_dir: Path, tmp_path):
    command = namespace_command()
    if command is None:
        pytest.skip("unshare -n is not permitted here (needs util-linux, iproute2 and root "
                    "or unprivileged user namespaces)")  # fmt: skip
    # The training data with web addresses in it: their redaction reads the suffix list.
    train = job_dir / "train.jsonl"
    lines = train.read_text().splitlines()
    train.unlink()  # a link to the shared workspace: this test writes its own copy
    url_record = {"messages": [
        {"role": "user", "content": "Where are my results? My portal is mychart.example.org."},
        {"role": "assistant", "content": "See https://results.example.org/p/4411 after 5pm."},
    ]}  # fmt: skip
    train.write_text("\n".join([*lines, json.dumps(url_record)]) + "\n")
    manifest = (
        MakeJob.trainer()
        .spec(
            dataset={"cleaning": {"redactPII": True}},
            hyperparameters={"maxSteps": 2},
            resources={"workers": 1},  # Ray, DeepSpeed and a worker all the same; less waiting
        )
        .obj()
    )
    job = write_job(job_dir, manifest)
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    attempts = tmp_path / "attempts.jsonl"
    unset = (*QUIET_NAMES, "FINETUNE_TELEMETRY", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(hooks), *filter(None, [env.get("PYTHONPATH")])]),
        ATTEMPTS_ENV: str(attempts),
        HOOKED_ENV: str(tmp_path / "hooked.jsonl"),
    }
    finetune = [sys.executable, "-m", "finetune_operator.cli", "run", str(job)]
    script = 'ip link set lo up && exec "$@"'
    result = subprocess.run(
        [*command, "sh", "-c", script, "sh", *finetune],
        env=env,
        capture_output=True,
        text=True,
        timeout=840,  # 2 minutes on an idle 2-core machine, 9 on a crowded one
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = job_dir / "out"
    assert json.loads((out / "metrics.json").read_text())["eval_loss"] > 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((out / "data_report.json").read_text())
    assert report["pii_redactions"].get("url", 0) >= 2
    written = "".join(path.read_text() for path in out.glob("*.jsonl"))
    assert "example.org" not in written and "<URL>" in written
    seen = outside_attempts(attempts)
    assert seen == [], "attempts to reach outside loopback:\n" + "\n".join(map(str, seen[:20]))
    # The watch was on: the driver and the Ray workers that trained installed the hook.
    hooked = [json.loads(line) for line in (tmp_path / "hooked.jsonl").read_text().splitlines()]
    assert ["-m", "run"] in hooked, hooked  # the driver (`-m`: argv before runpy sets it)
    assert any("default_worker" in " ".join(argv) for argv in hooked), hooked
