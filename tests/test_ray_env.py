"""Local Ray is pinned to loopback whatever was imported first; joining a cluster sends the
configured token (issue 13 item 12). Each check runs in a fresh interpreter: Ray reads its
settings once per process, and the session's own Ray must not be touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAKE_TOKEN = "fake-ray-token-0c9e4b71d2a8f356"

LOOPBACK_PROBE = """
import json
import ray  # imported first (pipeline.train.trainer imports ray.train before init_ray)
from pipeline.config import RayConfig
from pipeline.ray_env import init_ray

init_ray(RayConfig(num_cpus=1))

@ray.remote(num_cpus=0)
def worker_ip():
    return ray.util.get_node_ip_address()  # what Ray Train uses for MASTER_ADDR

@ray.remote(num_cpus=0)
def worker_env():
    import os
    # read by the Train controller and by Ray Data's Parquet listing, both in workers
    return {k: os.environ.get(k) for k in ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                                           "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS")}

out = {"driver": ray.util.get_node_ip_address(),
       "nodes": [n["NodeManagerAddress"] for n in ray.nodes()],
       "worker": ray.get(worker_ip.remote(), timeout=120),
       "worker_env": ray.get(worker_env.remote(), timeout=120)}
ray.shutdown()
print("RESULT " + json.dumps(out))
"""

TOKEN_PROBE = """
import json, logging, sys
import ray
from ray._raylet import AuthenticationMode, AuthenticationTokenLoader, get_authentication_mode
from pipeline.config import RayConfig
from pipeline.ray_env import InsecureRayAddressError, init_ray

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
calls = []
ray.init = lambda **kw: calls.append(kw)          # no cluster: record the call
ray.cluster_resources = lambda: {"CPU": 1.0}
out = {}
try:
    init_ray(RayConfig(address="10.1.2.3:6379", auth_token_env="PROBE_TOKEN"))
except InsecureRayAddressError as exc:
    out["refused"] = str(exc)
import os
os.environ["PROBE_TOKEN"] = sys.argv[1]
init_ray(RayConfig(address="10.1.2.3:6379", auth_token_env="PROBE_TOKEN"))
loader = AuthenticationTokenLoader.instance()
out.update(poll_interval=os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"),
           footer_actors=os.environ.get("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"),
           calls=calls, token_mode=get_authentication_mode() == AuthenticationMode.TOKEN,
           sends_ours=loader.has_token() and sys.argv[1] in str(loader.get_raw_token()))
print("RESULT " + json.dumps(out))
"""


def _probe(code: str, tmp_path: Path, *args: str, timeout: float) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "RAY_AUTH_MODE",
                        "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                        "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of the user's
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):]), proc.stderr


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_local_ray_binds_loopback_without_the_variable(tmp_path: Path) -> None:
    out, _ = _probe(LOOPBACK_PROBE, tmp_path, timeout=170)
    assert out["driver"] == "127.0.0.1"
    assert out["nodes"] == ["127.0.0.1"]
    assert out["worker"] == "127.0.0.1"
    # Ray Train's controller, like every local worker, polls its workers every 0.25 s, and
    # Ray Data lists Parquet footers with one actor, not 32 worker processes per read
    assert out["worker_env"] == {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
                                 "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}


@pytest.mark.unit
@pytest.mark.timeout(120)
def test_joining_a_cluster_sends_the_configured_token(tmp_path: Path) -> None:
    out, log = _probe(TOKEN_PROBE, tmp_path, FAKE_TOKEN, timeout=110)
    # Without a token a non-local address is refused, before ray.init.
    assert "10.1.2.3" in out["refused"] and "PROBE_TOKEN" in out["refused"]
    assert out["calls"] == [{"address": "10.1.2.3:6379"}]
    assert out["poll_interval"] is None  # a cluster's controller keeps Ray's own interval
    assert out["footer_actors"] is None  # and Ray Data its own footer reader pool
    # Ray's own config now sends our token (the old code set the variables after Ray had
    # read them at import, so no token went out).
    assert out["token_mode"] is True and out["sends_ours"] is True
    assert "sent without encryption to 10.1.2.3:6379" in log
    assert FAKE_TOKEN not in log


@pytest.mark.unit
@pytest.mark.parametrize(("address", "warned"), [
    ("http://10.1.2.3:8265", True), ("10.1.2.3:8265", True), ("https://ray.example.com", False),
    ("http://127.0.0.2:8265", False)])
def test_token_over_plain_http_to_a_remote_address_is_warned(
        address: str, warned: bool, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.config import RayConfig
    from pipeline.orchestrator.backend_ray import submission_token

    cfg = RayConfig(job_address=address)
    with caplog.at_level("WARNING", logger="pipeline.ray_env"):
        assert submission_token(cfg, {"RAY_AUTH_TOKEN": FAKE_TOKEN}) == FAKE_TOKEN
    assert ("sent without encryption" in caplog.text) is warned
    assert FAKE_TOKEN not in caplog.text
