"""Object-storage fixtures: moto's S3 server on 127.0.0.1 and fake credentials.

Credentials travel only through the environment, as they would in production (a pod's env
from a Kubernetes Secret). They are set here at import time, i.e. while pytest collects,
before any session fixture (`ray_local`) can start Ray: the raylet and every worker it
spawns inherit the environment of the process that calls `ray.init`, so Ray Data read
tasks and Ray Train workers see the variables without a `runtime_env`. A runtime_env is
deliberately not used: Ray stores it in the job table and prints it in driver and
dashboard logs, which would put the secret into artifacts. `s3_ray` checks, by a digest
and never the value, that the workers really have them, and restarts the local Ray once
if something started it earlier with another environment.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

FAKE_ACCESS_KEY_ID = "AKIAPIPELINETESTKEY7"
FAKE_SECRET_ACCESS_KEY = "pipeline-test-secret-5f0c2a9e4b7d"
SECRET_VALUES = (FAKE_ACCESS_KEY_ID, FAKE_SECRET_ACCESS_KEY)

os.environ["AWS_ACCESS_KEY_ID"] = FAKE_ACCESS_KEY_ID
os.environ["AWS_SECRET_ACCESS_KEY"] = FAKE_SECRET_ACCESS_KEY
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # never probe an instance-metadata host

_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(proc: subprocess.Popen[bytes], url: str) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False  # exited (e.g. the port was taken in between)
        try:
            with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1):
                return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server by its pid: SIGTERM, then SIGKILL if it does not exit."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto S3 server on 127.0.0.1 (a subprocess of this session)."""
    log_path = tmp_path_factory.mktemp("moto") / "server.log"
    # The server needs no credentials: keep them out of its environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    for _attempt in range(3):
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
        if _wait_until_up(proc, url):
            break
        _stop(proc)
    else:
        pytest.fail(f"moto S3 server did not start in 3 tries; log: {log_path}")
    try:
        yield url
    finally:
        _stop(proc)


@dataclass(frozen=True)
class S3Bucket:
    """One empty bucket on the test server, and the fsspec options that reach it."""

    endpoint: str
    name: str
    fs: Any  # s3fs.S3FileSystem

    @property
    def options(self) -> dict[str, Any]:
        return {"endpoint_url": self.endpoint}

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.name}", *parts])

    def keys(self) -> list[str]:
        self.fs.invalidate_cache()  # Ray workers wrote some of them, in other processes
        return sorted(self.fs.find(self.name))

    def objects_with_secrets(self) -> list[str]:
        """Every object of the bucket whose bytes contain a credential value."""
        found = []
        for key in self.keys():
            body = self.fs.cat_file(key)
            if any(secret.encode() in body for secret in SECRET_VALUES):
                found.append(key)
        return found


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> S3Bucket:
    """A fresh bucket per test, named after the test."""
    from pipeline.storage import Location

    fs, _ = Location("s3://probe", {"endpoint_url": s3_endpoint}).filesystem()
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    name = f"pipeline-{digest}"
    fs.mkdir(name)
    return S3Bucket(s3_endpoint, name, fs)


def _digest(value: str | None) -> str:
    return hashlib.sha256((value or "").encode()).hexdigest()


def _workers_have_credentials(ray: Any) -> bool:
    @ray.remote(num_cpus=0)
    def check(want: str) -> bool:
        # Self-contained: a worker cannot import this conftest module.
        import hashlib
        import os

        got = os.environ.get("AWS_SECRET_ACCESS_KEY") or ""
        return hashlib.sha256(got.encode()).hexdigest() == want

    return bool(ray.get(check.remote(_digest(FAKE_SECRET_ACCESS_KEY)), timeout=120))


@pytest.fixture(scope="session")
def s3_ray(ray_local: Any) -> Any:
    """The session's local Ray, with workers that see the fake credentials."""
    from pipeline.config import RayConfig
    from pipeline.ray_env import init_ray

    if not _workers_have_credentials(ray_local):
        ray_local.shutdown()  # started before this conftest set the environment
        init_ray(RayConfig(num_cpus=2))
        assert _workers_have_credentials(ray_local), "Ray workers lack the credentials"
    return ray_local

