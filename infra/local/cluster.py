"""A real Spark standalone cluster and a two-node Ray cluster on loopback addresses.

    python infra/local/cluster.py up [--dir DIR] [--spark/--no-spark] [--ray/--no-ray]
    python infra/local/cluster.py down|status|kill-ray-worker|start-ray-worker [--dir DIR]

Run it with the project's virtualenv Python (it starts that environment's `ray` and
pyspark's `spark-class`); the script itself needs only the standard library.

- Spark: a master on 127.0.0.1 and one worker (2 cores, 2g), both web UIs on 127.0.0.1.
- Ray: a head node on 127.0.0.2 (dashboard and Jobs API on 127.0.0.2) and a worker node on
  127.0.0.3, 2 CPUs each. Ray replaces 127.0.0.1 with the machine's outward address, so
  each node gets its own loopback address instead. Token authentication is on: a fresh
  token goes to DIR/ray_token (mode 0600) and the nodes read it through
  RAY_AUTH_TOKEN_PATH, so it is in no command line, environment, log or JSON file.

All ports are free ports picked at start, so several clusters (CI jobs, engineers) can run
side by side. DIR/cluster.json (written atomically, after every change) describes the
cluster; DIR/logs/ holds every daemon's output. `down` stops every process group that `up`
started and checks that none of their processes is left; it is idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nodes
from procs import ClusterError, is_alive, kill_groups, stop_groups

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".cluster"
STATE_FILE = "cluster.json"
TOKEN_FILE = "ray_token"
# Spark's daemons stop at once on SIGTERM; Ray's raylets drain for ~10 s and its GCS and
# `ray start --block` keep running, so they get SIGKILL after this (nothing to save here).
DOWN_GRACE_S = 3.0


def state_path(cluster_dir: Path) -> Path:
    return cluster_dir / STATE_FILE


def load_state(cluster_dir: Path) -> dict[str, Any] | None:
    """The cluster description in `cluster_dir`, or None if there is none."""
    try:
        return dict(json.loads(state_path(cluster_dir).read_text()))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ClusterError(f"{state_path(cluster_dir)} is not valid JSON: {exc}") from exc


def save_state(cluster_dir: Path, state: dict[str, Any]) -> None:
    """Write cluster.json atomically (temporary file, then rename)."""
    path = state_path(cluster_dir)
    fd, tmp = tempfile.mkstemp(prefix=".cluster-", suffix=".json", dir=cluster_dir)
    with os.fdopen(fd, "w") as out:
        json.dump(state, out, indent=2, sort_keys=True)
        out.write("\n")
    os.replace(tmp, path)


def _write_token(path: Path) -> None:
    # Created 0600 from the start: the token is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32))
    os.chmod(path, 0o600)


def alive_components(state: dict[str, Any]) -> dict[str, bool]:
    """For each component `up` recorded: is its process still running?"""
    procs = state.get("procs", {})
    return {name: is_alive(p["pid"], p["start"]) for name, p in procs.items()}


def _record(state: dict[str, Any], cluster_dir: Path, name: str, started: nodes.Started) -> None:
    state.setdefault("procs", {})[name] = {"pid": started.pid, "start": started.start}
    state.setdefault("pids", {})[name] = started.pid
    state.setdefault("logs", {})[name] = str(started.log)
    save_state(cluster_dir, state)


def up(cluster_dir: Path, spark: bool = True, ray: bool = True) -> dict[str, Any]:
    """Start the requested clusters into `cluster_dir`; on any failure stop what started."""
    cluster_dir = cluster_dir.resolve()
    old = load_state(cluster_dir)
    if old is not None:
        alive = alive_components(old)
        if alive and all(alive.values()):
            print(f"cluster already running in {cluster_dir} ({len(alive)} processes)")
            return old
        down(cluster_dir)  # leftovers of a crashed or partly stopped cluster
    cluster_dir.mkdir(parents=True, exist_ok=True)
    logs = cluster_dir / "logs"
    logs.mkdir(exist_ok=True)
    state: dict[str, Any] = {"dir": str(cluster_dir), "procs": {}, "pids": {}, "logs": {}}
    save_state(cluster_dir, state)
    try:
        if spark:
            master = nodes.start_spark_master(cluster_dir)
            state.update(spark_master=master.address, spark_ui=master.ui)
            _record(state, cluster_dir, "spark-master", master)
        if ray:
            token_file = cluster_dir / TOKEN_FILE
            _write_token(token_file)
            # Short root for Ray's Unix sockets (108-byte limit); removed by `down`.
            temp_root = Path(tempfile.mkdtemp(prefix="rayc-", dir="/tmp"))
            state.update(token_file=str(token_file), ray_temp_dir=str(temp_root))
            head = nodes.start_ray_head(cluster_dir, temp_root, token_file)
            state.update(ray_address=head.address, ray_dashboard=head.ui,
                         ray_nodes={"ray-head": nodes.RAY_HEAD_IP})
            _record(state, cluster_dir, "ray-head", head)
        if spark:
            nodes.wait_spark_master(state["spark_ui"], state["logs"]["spark-master"],
                                    state["procs"]["spark-master"])
            _record(state, cluster_dir, "spark-worker",
                    nodes.start_spark_worker(cluster_dir, state["spark_master"]))
        if ray:
            nodes.wait_ray_head(state["logs"]["ray-head"], state["procs"]["ray-head"])
            start_ray_worker(cluster_dir, state)
        if spark:
            nodes.wait_spark_workers(state["spark_ui"], 1, state["logs"]["spark-worker"],
                                     state["procs"]["spark-worker"])
    except BaseException:
        down(cluster_dir)
        raise
    print(f"cluster up in {cluster_dir}: " + ", ".join(
        f"{k}={state[k]}" for k in ("spark_master", "ray_address", "ray_dashboard")
        if k in state))
    return state


def start_ray_worker(cluster_dir: Path, state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start (or restart) the Ray worker node on 127.0.0.3 and wait until both nodes are
    alive in the cluster."""
    cluster_dir = cluster_dir.resolve()
    state = state if state is not None else load_state(cluster_dir)
    if state is None or "ray_address" not in state:
        raise ClusterError(f"no Ray cluster recorded in {cluster_dir}; run `up` first")
    old = state["procs"].get("ray-worker")
    if old is not None and is_alive(old["pid"], old["start"]):
        raise ClusterError(f"the Ray worker node is already running (pid {old['pid']})")
    token_file = Path(state["token_file"])
    worker = nodes.start_ray_worker(cluster_dir, Path(state["ray_temp_dir"]), token_file,
                                    state["ray_address"])
    _record(state, cluster_dir, "ray-worker", worker)
    state["ray_nodes"]["ray-worker"] = nodes.RAY_WORKER_IP
    save_state(cluster_dir, state)
    nodes.wait_ray_nodes(state["ray_dashboard"], token_file.read_text().strip(),
                         set(state["ray_nodes"].values()), worker.log, worker)
    return state


def kill_ray_worker(cluster_dir: Path) -> list[int]:
    """SIGKILL the Ray worker node: its raylet, agents and workers, all at once, as a
    crashed machine would. Returns the killed pids."""
    cluster_dir = cluster_dir.resolve()
    state = load_state(cluster_dir)
    proc = (state or {}).get("procs", {}).get("ray-worker")
    if state is None or proc is None or not is_alive(proc["pid"], proc["start"]):
        raise ClusterError(f"no running Ray worker node recorded in {cluster_dir}")
    killed = kill_groups([(proc["pid"], proc["start"])])
    state["ray_nodes"].pop("ray-worker", None)
    save_state(cluster_dir, state)
    print(f"killed the Ray worker node: {len(killed)} processes (group {proc['pid']})")
    return killed


def down(cluster_dir: Path, grace_s: float = DOWN_GRACE_S) -> int:
    """Stop every process group recorded in `cluster_dir`: SIGTERM, then SIGKILL after
    `grace_s`; idempotent. Returns how many processes were signalled. Raises
    ClusterError if any survived."""
    cluster_dir = cluster_dir.resolve()
    state = load_state(cluster_dir)
    if state is None:
        print(f"no cluster in {cluster_dir}")
        return 0
    procs = state.get("procs", {})
    # All at once: Ray's raylets take seconds to shut down, in parallel that is paid once.
    stopped = len(stop_groups([(p["pid"], p["start"]) for p in procs.values()], grace_s))
    temp_root = state.get("ray_temp_dir")
    if temp_root:
        nodes.keep_ray_logs(Path(temp_root), cluster_dir / "logs")
        shutil.rmtree(temp_root, ignore_errors=True)
    state_path(cluster_dir).unlink(missing_ok=True)
    (cluster_dir / TOKEN_FILE).unlink(missing_ok=True)
    print(f"cluster in {cluster_dir} stopped: {stopped} processes in {len(procs)} groups")
    return stopped


def status(cluster_dir: Path) -> int:
    """Print each component and whether it runs; 0 if all do, 1 otherwise."""
    state = load_state(cluster_dir.resolve())
    if state is None:
        print(f"no cluster in {cluster_dir}")
        return 1
    alive = alive_components(state)
    for key in ("spark_master", "spark_ui", "ray_address", "ray_dashboard", "token_file"):
        if key in state:
            print(f"{key:14} {state[key]}")
    for name, running in alive.items():
        print(f"{name:14} pid {state['procs'][name]['pid']:>7}  "
              f"{'running' if running else 'STOPPED'}  log {state['logs'][name]}")
    return 0 if alive and all(alive.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "kill-ray-worker", "start-ray-worker"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                         help=f"cluster folder (default {DEFAULT_DIR})")
        if name == "down":
            cmd.add_argument("--grace", type=float, default=DOWN_GRACE_S,
                             help="seconds between SIGTERM and SIGKILL")
        if name == "up":
            cmd.add_argument("--spark", action=argparse.BooleanOptionalAction, default=True,
                             help="start the Spark standalone cluster")
            cmd.add_argument("--ray", action=argparse.BooleanOptionalAction, default=True,
                             help="start the Ray cluster")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            if not (args.spark or args.ray):
                parser.error("nothing to start: both --no-spark and --no-ray given")
            up(args.dir, spark=args.spark, ray=args.ray)
        elif args.command == "down":
            down(args.dir, args.grace)
        elif args.command == "status":
            return status(args.dir)
        elif args.command == "kill-ray-worker":
            kill_ray_worker(args.dir)
        else:
            start_ray_worker(args.dir)
    except ClusterError as exc:
        print(f"cluster {args.command} failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
