"""A real S3 API for the storage tests: a moto server on 127.0.0.1, reached through s3fs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REGION = "us-east-1"
# moto accepts any signature; these only have to look like credentials.
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server for the session, on a free port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_environment(endpoint: str, home: Path) -> dict[str, str]:
    """What the trainer would get from a job's secretRef, and nothing from this machine."""
    return DUMMY_CREDENTIALS | {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": endpoint,
        # No ~/.aws files and no instance metadata: a missing credential must stay missing.
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-credentials"),
        "AWS_CONFIG_FILE": str(home / "no-config"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def s3(moto_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """An s3fs filesystem on an emptied moto server, with the AWS_* environment set."""
    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_environment(moto_endpoint, tmp_path).items():
        monkeypatch.setenv(name, value)
    # s3fs caches filesystems by their arguments, not by the environment they were made in.
    s3fs.S3FileSystem.clear_instance_cache()
    filesystem = s3fs.S3FileSystem(client_kwargs={"endpoint_url": moto_endpoint})
    yield filesystem
    _reset_moto(moto_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()


def _reset_moto(endpoint: str) -> None:
    """Drop every bucket so that each test starts from an empty store."""
    import urllib.request

    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture(scope="module")
def s3_ray(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A local Ray whose workers see the S3 environment, as a RayJob's pods get it from the
    job's Secret. Ray's worker processes take their environment when Ray starts, so a Ray
    started earlier without it (by another test folder) is restarted with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    environment = s3_environment(moto_endpoint, tmp_path_factory.mktemp("no-aws-home"))
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        runtime_env={"env_vars": environment},
    )
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def data_stage_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """`finetune prepare` reads in the test process here: each test sets its own S3
    credentials, while the workers of a Ray instance that an earlier test in this process
    started keep the environment they started with (tests/integration/trainer covers the
    Ray Data stage)."""
    monkeypatch.setenv("FINETUNE_DATA_WORKERS", "0")
