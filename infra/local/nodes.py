"""Starting and probing each daemon of the local clusters (standard library only).

Sizes are kept small on purpose: the machine this runs on has 2 cores shared by several
people. Spark gets one worker with 2 cores and 2g; Ray gets 2 CPUs and a 200 MB object
store per node.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import (
    ClusterError,
    free_ports,
    http_get,
    http_json,
    is_alive,
    log_contains,
    spawn,
    wait_until,
)

SPARK_IP = "127.0.0.1"
RAY_HEAD_IP = "127.0.0.2"
RAY_WORKER_IP = "127.0.0.3"
SPARK_WORKER_CORES = 2
SPARK_WORKER_MEMORY = "2g"
RAY_CPUS_PER_NODE = 2
RAY_OBJECT_STORE_BYTES = 200 * 1024 * 1024
START_TIMEOUT_S = 120.0  # generous: 2 shared cores, and Ray imports a lot on start
_RAY_STARTED = "Ray runtime started."


@dataclass(frozen=True)
class Started:
    """One daemon started by `spawn`: its process (group) id, start time and log."""

    pid: int
    start: int
    log: Path
    address: str = ""  # what clients connect to
    ui: str = ""  # its HTTP endpoint (web UI / dashboard)


def _spark_class() -> Path:
    spec = importlib.util.find_spec("pyspark")  # locates pyspark without importing it
    if spec is None or spec.origin is None:
        raise ClusterError(f"pyspark is not installed for {sys.executable}; run `make setup`")
    path = Path(spec.origin).parent / "bin" / "spark-class"
    if not path.exists():
        raise ClusterError(f"{path} is missing from the pyspark install")
    return path


def _ray_cli() -> Path:
    path = Path(sys.executable).parent / "ray"
    if not path.exists():
        raise ClusterError(f"no `ray` next to {sys.executable}; install ray[default]")
    return path


def _spark_env() -> dict[str, str]:
    env = dict(os.environ)
    # SPARK_LOCAL_IP binds the RPC endpoints *and* the web UIs (Jetty) to loopback.
    env.update(SPARK_LOCAL_IP=SPARK_IP, SPARK_DAEMON_MEMORY="512m",
               PYSPARK_PYTHON=sys.executable,  # executors run this Python by default
               # No REST submission gateway: it would take the fixed port 6066.
               SPARK_MASTER_OPTS="-Dspark.master.rest.enabled=false")
    return env


def start_spark_master(cluster_dir: Path) -> Started:
    """A standalone master on 127.0.0.1 (RPC and web UI on free ports)."""
    port, ui_port = free_ports(SPARK_IP, 2)
    log = cluster_dir / "logs" / "spark-master.log"
    pid, start = spawn([str(_spark_class()), "org.apache.spark.deploy.master.Master",
                        "--host", SPARK_IP, "--port", str(port), "--webui-port", str(ui_port)],
                       log, _spark_env(), cwd=cluster_dir)
    return Started(pid, start, log, f"spark://{SPARK_IP}:{port}", f"http://{SPARK_IP}:{ui_port}")


def _running(proc: Mapping[str, int]) -> Callable[[], bool]:
    return lambda: is_alive(proc["pid"], proc["start"])


def wait_spark_master(ui: str, log: str, proc: Mapping[str, int]) -> None:
    wait_until(lambda: (http_json(f"{ui}/json/") or {}).get("status") == "ALIVE",
               "Spark master", START_TIMEOUT_S, Path(log), alive=_running(proc))


def start_spark_worker(cluster_dir: Path, master: str) -> Started:
    """One worker (2 cores, 2g) registered with `master`; work files under DIR/spark-work."""
    port, ui_port = free_ports(SPARK_IP, 2)
    log = cluster_dir / "logs" / "spark-worker.log"
    work = cluster_dir / "spark-work"
    work.mkdir(exist_ok=True)
    pid, start = spawn([str(_spark_class()), "org.apache.spark.deploy.worker.Worker",
                        "--host", SPARK_IP, "--port", str(port), "--webui-port", str(ui_port),
                        "--cores", str(SPARK_WORKER_CORES), "--memory", SPARK_WORKER_MEMORY,
                        "--work-dir", str(work), master], log, _spark_env(), cwd=cluster_dir)
    return Started(pid, start, log, f"{SPARK_IP}:{port}", f"http://{SPARK_IP}:{ui_port}")


def spark_alive_workers(ui: str) -> int:
    """How many workers the master lists as ALIVE (0 if the master does not answer)."""
    workers = (http_json(f"{ui}/json/") or {}).get("workers", [])
    return sum(1 for w in workers if w.get("state") == "ALIVE")


def wait_spark_workers(ui: str, count: int, log: str, proc: Mapping[str, int]) -> None:
    wait_until(lambda: spark_alive_workers(ui) >= count,
               f"Spark worker registration ({count} expected)", START_TIMEOUT_S, Path(log),
               alive=_running(proc))


def _ray_env(token_file: Path, gcs_address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_API_SERVER_ADDRESS")}
    # Every process of the cluster (and of its jobs) inherits its own GCS address: with
    # several Ray instances on one machine, `address="auto"` lookups (Ray Train's
    # placement group cleaner, state API calls) would otherwise find them all and fail.
    env["RAY_ADDRESS"] = gcs_address
    # Jobs' entrypoints (`python ...`) resolve against this PATH: the venv's Python first.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file),
               RAY_USAGE_STATS_ENABLED="0",
               # The test suite sets this to 0 to pin local Ray to 127.0.0.1; a value
               # of 0 also forbids worker nodes, on Linux too.
               RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1",
               # A killed node is declared dead after ~3 s instead of the default ~15 s.
               RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3")
    # Ray Data lists Parquet footers on 32 new actor processes per read by default; on
    # one machine's cores that start-up dominates every evaluation (see local_ray_env in
    # pipeline/ray_env.py). One per node reads local footers as fast.
    env.setdefault("RAY_DATA_PARQUET_FOOTER_NUM_ACTORS", "2")
    return env


def _ray_node_ports(names: tuple[str, ...]) -> list[str]:
    # Ray's gRPC servers listen on every interface: pick ports free on all of them.
    return [f"--{name}={port}" for name, port in zip(names, free_ports("0.0.0.0", len(names)),
                                                     strict=True)]


_NODE_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
               "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")


def _ray_common(ip: str, temp: Path) -> list[str]:
    return ["--block", f"--node-ip-address={ip}", f"--num-cpus={RAY_CPUS_PER_NODE}",
            f"--object-store-memory={RAY_OBJECT_STORE_BYTES}", f"--temp-dir={temp}",
            "--disable-usage-stats", "--log-style=record", "--log-color=false"]


def start_ray_head(cluster_dir: Path, temp_root: Path, token_file: Path) -> Started:
    """The head node on 127.0.0.2: GCS, dashboard + Jobs API (bound to 127.0.0.2)."""
    head_ports = _ray_node_ports(("port", "dashboard-port", "ray-client-server-port"))
    gcs_port, dash_port = (int(a.split("=")[1]) for a in head_ports[:2])
    log = cluster_dir / "logs" / "ray-head.log"
    cmd = [str(_ray_cli()), "start", "--head", *_ray_common(RAY_HEAD_IP, temp_root / "head"),
           "--include-dashboard=true", f"--dashboard-host={RAY_HEAD_IP}", *head_ports,
           *_ray_node_ports(_NODE_PORTS)]
    pid, start = spawn(cmd, log, _ray_env(token_file, f"{RAY_HEAD_IP}:{gcs_port}"),
                       cwd=cluster_dir)
    return Started(pid, start, log, f"{RAY_HEAD_IP}:{gcs_port}",
                   f"http://{RAY_HEAD_IP}:{dash_port}")


def wait_ray_head(log: str, proc: Mapping[str, int]) -> None:
    wait_until(lambda: log_contains(Path(log), _RAY_STARTED), "Ray head node",
               START_TIMEOUT_S, Path(log), alive=_running(proc))


def start_ray_worker(cluster_dir: Path, temp_root: Path, token_file: Path,
                     address: str) -> Started:
    """A worker node on 127.0.0.3 joined to the head at `address` (a fresh temp folder on
    every start, so a restarted node never meets a killed one's sockets)."""
    n = 0
    while (temp_root / f"worker-{n}").exists():
        n += 1
    log = cluster_dir / "logs" / "ray-worker.log"
    cmd = [str(_ray_cli()), "start", f"--address={address}",
           *_ray_common(RAY_WORKER_IP, temp_root / f"worker-{n}"),
           *_ray_node_ports(_NODE_PORTS)]
    pid, start = spawn(cmd, log, _ray_env(token_file, address), cwd=cluster_dir)
    return Started(pid, start, log, RAY_WORKER_IP)


def ray_alive_nodes(dashboard: str, token: str) -> list[dict[str, Any]]:
    """The ALIVE nodes according to the dashboard's state API ([] if it does not answer)."""
    answer = http_json(f"{dashboard}/api/v0/nodes?limit=100", token) or {}
    rows = answer.get("data", {}).get("result", {}).get("result", [])
    return [row for row in rows if row.get("state") == "ALIVE"]


def wait_ray_nodes(dashboard: str, token: str, ips: set[str], log: Path,
                   proc: Started | None = None) -> None:
    """Wait until exactly the nodes at `ips` are alive and the Jobs API answers."""
    def ready() -> bool:
        alive = {row.get("node_ip") for row in ray_alive_nodes(dashboard, token)}
        return alive == ips and http_get(f"{dashboard}/api/jobs/", token)[0] == 200

    wait_until(ready, f"Ray nodes {sorted(ips)} alive with the Jobs API up", START_TIMEOUT_S,
               log, alive=None if proc is None else lambda: is_alive(proc.pid, proc.start))


def keep_ray_logs(temp_root: Path, logs: Path, max_bytes: int = 5_000_000) -> None:
    """Copy each Ray node's session logs into DIR/logs/ray-<node>/ before the temp folder
    goes (skipping files over `max_bytes`)."""
    if not temp_root.is_dir():
        return
    for node in sorted(temp_root.iterdir()):
        source = node / "session_latest" / "logs"
        if not source.is_dir():
            continue
        target = logs / f"ray-{node.name}"
        for path in source.rglob("*"):
            try:
                if path.is_file() and path.stat().st_size <= max_bytes:
                    dest = target / path.relative_to(source)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, dest)
            except OSError as exc:  # a log being rotated: say so, keep the rest
                print(f"kept no copy of {path}: {exc}", file=sys.stderr)

