"""The local clusters of infra/local/cluster.py: both come up on loopback, run a Ray job,
refuse Ray clients without the token, and `down` leaves no process behind (checked by
the `local_cluster` fixture's teardown for every session)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.cluster.conftest import LocalCluster

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"


def _get_json(url: str, token: str | None = None) -> Any:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _status_without(url: str, token: str | None) -> int:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _alive_ray_nodes(cluster: LocalCluster) -> list[dict[str, Any]]:
    answer = _get_json(f"{cluster.ray_dashboard}/api/v0/nodes?limit=100", cluster.token)
    return [n for n in answer["data"]["result"]["result"] if n["state"] == "ALIVE"]


@pytest.mark.cluster
def test_cluster_has_two_ray_nodes_and_a_spark_worker(local_cluster: LocalCluster) -> None:
    nodes = _alive_ray_nodes(local_cluster)
    assert sorted(n["node_ip"] for n in nodes) == [HEAD_IP, WORKER_IP]
    assert [n["is_head_node"] for n in sorted(nodes, key=lambda n: n["node_ip"])] == [
        True, False]
    assert local_cluster.ray_address.startswith(f"{HEAD_IP}:")
    assert local_cluster.ray_dashboard.startswith(f"http://{HEAD_IP}:")
    master = _get_json(f"{local_cluster.spark_ui}/json/")
    assert master["status"] == "ALIVE" and master["url"] == local_cluster.spark_master
    alive = [w for w in master["workers"] if w["state"] == "ALIVE"]
    assert len(alive) == 1 and alive[0]["cores"] == 2 and alive[0]["host"] == "127.0.0.1"
    token_file = Path(local_cluster.state["token_file"])
    assert token_file.stat().st_mode & 0o777 == 0o600
    # No secret in the description other tools read, nor in any daemon's output.
    assert local_cluster.token not in (local_cluster.dir / "cluster.json").read_text()
    for log in (local_cluster.dir / "logs").rglob("*.log"):
        assert local_cluster.token not in log.read_text(errors="replace"), log


RAY_DRIVER = """
import json, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init(address="auto")

@ray.remote(num_cpus=1)
def where():
    return ray.util.get_node_ip_address()

nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
ips = ray.get([where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
    node_id=n, soft=False)).remote() for n in nodes])
print("PLACED", json.dumps(sorted(ips)))
"""


def _submit(cluster: LocalCluster, env: dict[str, str], workdir: Path,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    (workdir / "driver.py").write_text(RAY_DRIVER)
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.ray_dashboard,
         "--working-dir", str(workdir), "--", "python", "driver.py"],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir, check=False)


@pytest.mark.cluster
def test_ray_job_submit_places_a_task_on_each_node(local_cluster: LocalCluster,
                                                   tmp_path: Path) -> None:
    env = local_cluster.ray_env({"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
                                 "RAY_USAGE_STATS_ENABLED": "0"})
    result = _submit(local_cluster, env, tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert f'PLACED {json.dumps([HEAD_IP, WORKER_IP])}' in result.stdout
    assert "succeeded" in result.stdout
    assert local_cluster.token not in result.stdout + result.stderr


@pytest.mark.cluster
def test_ray_refuses_clients_without_the_token(local_cluster: LocalCluster,
                                               tmp_path: Path) -> None:
    jobs = f"{local_cluster.ray_dashboard}/api/jobs/"
    assert _status_without(jobs, None) == 401
    assert _status_without(jobs, "0" * 64) == 403
    assert _status_without(jobs, local_cluster.token) == 200
    # The CLI with no token at all (and an empty HOME, so no ~/.ray/auth_token either).
    bare = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
            "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    result = _submit(local_cluster, bare, tmp_path, timeout=60)
    assert result.returncode != 0
    assert "PLACED" not in result.stdout
    assert "token" in (result.stdout + result.stderr).lower()
    wrong = {**bare, "RAY_AUTH_TOKEN": "f" * 64}
    result = _submit(local_cluster, wrong, tmp_path, timeout=60)
    assert result.returncode != 0 and "PLACED" not in result.stdout


def _listening(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on `port` (IPv4 and IPv6 tables)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.rsplit(":", 1)
            if state == "0A" and int(hexport, 16) == port:  # 0A = LISTEN
                found.append(_address(addr))
    return found


def _address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:  # IPv4, little-endian
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i:i + 4][::-1] for i in range(0, 16, 4)]  # IPv6: 4 little-endian words
    full = b"".join(words)
    if full[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped ::ffff:a.b.c.d
        return ".".join(str(b) for b in full[12:])
    return full.hex()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


@pytest.mark.cluster
def test_web_uis_and_master_listen_on_loopback_only(local_cluster: LocalCluster) -> None:
    master = _get_json(f"{local_cluster.spark_ui}/json/")
    worker_ui = master["workers"][0]["webuiaddress"]
    ports = {"ray dashboard": _port(local_cluster.ray_dashboard),
             "spark master UI": _port(local_cluster.spark_ui),
             "spark master": _port(local_cluster.spark_master),
             "spark worker UI": _port(worker_ui)}
    for name, port in ports.items():
        addresses = _listening(port)
        assert addresses, f"nothing listens on the {name} port {port}"
        assert all(a.startswith("127.") for a in addresses), (name, port, addresses)


@pytest.mark.cluster
def test_cluster_processes_are_all_found(local_cluster: LocalCluster) -> None:
    # What the teardown check relies on: every daemon is found with its descendants
    # (Ray's raylets and agents), and each recorded pid is among them.
    seen = local_cluster.processes()
    # cluster.json as it is now: the chaos test restarts the worker node (new pids).
    pids = local_cluster.reload().state["pids"]
    assert set(pids.values()) <= set(seen)
    assert len(seen) > len(pids)
    assert local_cluster.survivors(seen) == sorted(seen)


# The script's error paths, without starting anything (fast, no cluster).

def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "infra" / "local" / "cluster.py"),
                           *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.unit
def test_script_on_a_folder_without_cluster(tmp_path: Path) -> None:
    down = _script("down", "--dir", str(tmp_path))
    assert down.returncode == 0 and "no cluster in" in down.stdout  # idempotent
    status = _script("status", "--dir", str(tmp_path))
    assert status.returncode == 1 and "no cluster in" in status.stdout
    kill = _script("kill-ray-worker", "--dir", str(tmp_path))
    assert kill.returncode == 1
    assert "no running Ray worker node recorded in" in kill.stderr
    start = _script("start-ray-worker", "--dir", str(tmp_path))
    assert start.returncode == 1 and "run `up` first" in start.stderr
    nothing = _script("up", "--no-spark", "--no-ray", "--dir", str(tmp_path))
    assert nothing.returncode == 2 and "nothing to start" in nothing.stderr
    (tmp_path / "cluster.json").write_text("{not json")
    broken = _script("status", "--dir", str(tmp_path))
    assert broken.returncode == 1 and "cluster.json is not valid JSON" in broken.stderr


@pytest.mark.unit
def test_readiness_timeout_names_the_component_and_shows_the_log(tmp_path: Path,
                                                                 request: Any) -> None:
    procs = request.getfixturevalue("cluster_procs")
    log = tmp_path / "daemon.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "bind failed: port 7077\n")
    with pytest.raises(procs.ClusterError) as info:
        procs.wait_until(lambda: False, "Spark master", 0.6, log)
    message = str(info.value)
    assert message.startswith("Spark master: not ready after 1 s")
    assert "bind failed: port 7077" in message and "line 99" in message
    assert "line 10\n" not in message  # only the tail
    with pytest.raises(procs.ClusterError, match="Ray head node: the process exited"):
        procs.wait_until(lambda: False, "Ray head node", 30, log, alive=lambda: False)


@pytest.mark.unit
def test_stop_groups_kills_a_daemon_with_its_detached_children(tmp_path: Path,
                                                               request: Any) -> None:
    # Like a raylet with workers: the child moves to a session (and group) of its own
    # and ignores SIGTERM, so only the descendant walk and SIGKILL find and stop it.
    procs = request.getfixturevalue("cluster_procs")
    script = ("import os, signal, subprocess, sys, time\n"
              "subprocess.Popen([sys.executable, '-c', 'import signal, time; "
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'], "
              "start_new_session=True)\n"
              "time.sleep(60)\n")
    pid, start = procs.spawn([sys.executable, "-c", script], tmp_path / "d.log", os.environ)
    seen = procs.wait_until(lambda: len(procs.owned_processes(pid, start)) == 2 and
                            procs.owned_processes(pid, start), "child", 20, tmp_path / "d.log")
    stopped = procs.stop_groups([(pid, start)], grace_s=0.5)
    assert sorted(stopped) == sorted(seen)
    assert not [p for p, st in seen.items() if procs.is_alive(p, st)]
    assert procs.stop_groups([(pid, start)]) == []  # gone: nothing to do, no error
