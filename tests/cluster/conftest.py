"""Fixtures for tests against real clusters started by `infra/local/cluster.py`.

`local_cluster` (session-scoped) starts a Spark standalone cluster (master + 1 worker on
127.0.0.1) and a two-node Ray cluster (head 127.0.0.2, worker 127.0.0.3, token auth) in a
temporary folder, and always stops it: at the end of the session, when start-up fails
half-way, on KeyboardInterrupt, and (as a last resort) at interpreter exit.

The pytest process may already be connected to the in-process Ray of the `ray_local`
fixture, and a process can be connected to one Ray only, so talk to the cluster through
subprocesses (`ray job submit`, a `python -c` driver with `ray.init(address=...)`) or the
Jobs HTTP API (`ray.job_submission.JobSubmissionClient` with `ray_cluster_auth`), never
`ray.init` here.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "infra" / "local" / "cluster.py"
UP_TIMEOUT_S = 300
DOWN_TIMEOUT_S = 120


@dataclass(frozen=True)
class LocalCluster:
    """A running local cluster, as described by its `cluster.json`."""

    dir: Path
    spark_master: str  # spark://127.0.0.1:PORT
    spark_ui: str  # http://127.0.0.1:PORT (master web UI, /json/ lists workers)
    ray_address: str  # 127.0.0.2:PORT (GCS), for ray.init(address=...) / ray start
    ray_dashboard: str  # http://127.0.0.2:PORT (dashboard + Jobs API)
    token: str = field(repr=False)  # the Ray cluster's auth token: never print it
    state: Mapping[str, Any] = field(repr=False, default_factory=dict)

    def ray_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """An environment for a subprocess that talks to the Ray cluster (token auth)."""
        env = dict(os.environ if base is None else base)
        # RAY_API_SERVER_ADDRESS for `ray job ...`, RAY_ADDRESS for ray.init() drivers.
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_API_SERVER_ADDRESS=self.ray_dashboard, RAY_ADDRESS=self.ray_address,
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        return env

    def auth_headers(self) -> dict[str, str]:
        """HTTP headers for the Jobs API: `JobSubmissionClient(dashboard, headers=...)`.
        (Explicit headers win over Ray's process-wide token cache, which may hold the
        token of another Ray this process met first.)"""
        return {"Authorization": f"Bearer {self.token}"}

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `cluster.py <args> --dir <this cluster>` (kill-ray-worker, status, ...)."""
        return run_cluster_script(*args, "--dir", str(self.dir), timeout=timeout)

    def processes(self) -> dict[int, int]:
        """pid -> start time of every process the cluster runs now (see
        `cluster_processes`)."""
        return cluster_processes(self.dir)

    @staticmethod
    def survivors(seen: Mapping[int, int]) -> list[int]:
        """The processes of `seen` (pid -> start time) that are still running."""
        return survivors(seen)

    def reload(self) -> LocalCluster:
        """The cluster as cluster.json describes it now (pids change on a node restart)."""
        return load_cluster(self.dir)


def run_cluster_script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the cluster script with this interpreter; output captured, never raises."""
    return subprocess.run([sys.executable, str(CLUSTER_SCRIPT), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _run_interruptible(argv: list[str], timeout_s: float, grace_s: float = 60.0,
                      **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run `argv` in its own session, output captured. Past `timeout_s` it gets Ctrl-C
    (SIGINT to its whole process group) as a user would give it: `pipeline run` then stops
    the Ray job it submitted and spark-submit its application, so a slow run does not leave
    jobs on the shared cluster for the next test. SIGKILL follows after `grace_s`; then
    the test fails with the output's tail."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **popen)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return subprocess.CompletedProcess(argv, proc.returncode, out, "")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        pytest.fail(f"{argv[:4]} ran past {timeout_s:.0f} s and was interrupted:\n"
                    f"{(out or '')[-4000:]}")
    finally:
        if proc.poll() is None:  # the test itself was cut off (pytest-timeout, Ctrl-C)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def load_cluster(cluster_dir: Path) -> LocalCluster:
    """Read `cluster_dir/cluster.json` and the token file it names."""
    state = json.loads((cluster_dir / "cluster.json").read_text())
    token = Path(state["token_file"]).read_text().strip()
    return LocalCluster(dir=cluster_dir, spark_master=state["spark_master"],
                        spark_ui=state["spark_ui"], ray_address=state["ray_address"],
                        ray_dashboard=state["ray_dashboard"], token=token, state=state)


def _load_procs() -> Any:
    """infra/local/procs.py (a script's sibling module, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("local_cluster_procs",
                                                  CLUSTER_SCRIPT.parent / "procs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


procs = _load_procs()


def cluster_processes(cluster_dir: Path) -> dict[int, int]:
    """pid -> start time of every process the cluster in `cluster_dir` runs now: each
    daemon's process group and all their descendants (Ray workers included)."""
    try:
        state = json.loads((cluster_dir / "cluster.json").read_text())
    except FileNotFoundError:
        return {}
    found: dict[int, int] = {}
    for proc in state.get("procs", {}).values():
        found.update(procs.owned_processes(proc["pid"], proc["start"]))
    return found


def survivors(seen: Mapping[int, int]) -> list[int]:
    """The processes of `seen` (pid -> start time) that are still running."""
    return sorted(pid for pid, start in seen.items() if procs.is_alive(pid, start))


def _down(cluster_dir: Path) -> None:
    result = run_cluster_script("down", "--dir", str(cluster_dir), timeout=DOWN_TIMEOUT_S)
    if result.returncode != 0:  # reported, not raised: teardown must try everything
        print(f"cluster down failed ({result.returncode}):\n{result.stdout}{result.stderr}",
              file=sys.stderr)


@pytest.fixture(scope="session")
def run_interruptible() -> Any:
    """`run_interruptible(argv, timeout_s, **popen)`: a subprocess run that is stopped
    with Ctrl-C past its time, so that it stops its cluster jobs (see
    `_run_interruptible`)."""
    return _run_interruptible


@pytest.fixture(scope="session")
def cluster_procs() -> Any:
    """infra/local/procs.py: process, port and readiness helpers of the cluster script."""
    return procs


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Spark standalone + two-node Ray cluster for the whole session; always stopped."""
    cluster_dir = tmp_path_factory.mktemp("local_cluster")
    atexit.register(_down, cluster_dir)  # if pytest dies before the finally below
    # A SIGTERM (a CI job cancelled) would end the process without running `finally` or
    # atexit: turn it into SystemExit while the cluster runs, unless someone handles it.
    previous = signal.getsignal(signal.SIGTERM)
    if previous == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        result = run_cluster_script("up", "--dir", str(cluster_dir), timeout=UP_TIMEOUT_S)
        if result.returncode != 0:
            pytest.fail(f"local cluster did not start ({result.returncode}):\n"
                        f"{result.stdout}{result.stderr}", pytrace=False)
        yield load_cluster(cluster_dir)
    finally:  # also on KeyboardInterrupt and a failed or timed-out `up`
        seen = cluster_processes(cluster_dir)
        _down(cluster_dir)
        atexit.unregister(_down)
        if previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # `down` must leave nothing behind: checked on every run, as a teardown error.
    left = survivors(seen)
    assert not left, f"cluster down left {len(left)} of {len(seen)} processes: {left}"
    assert not (cluster_dir / "cluster.json").exists(), "cluster.json outlived `down`"


@pytest.fixture()
def ray_cluster_auth(local_cluster: LocalCluster,
                     monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """RAY_AUTH_MODE=token and the cluster's RAY_AUTH_TOKEN in os.environ for one test
    (for `JobSubmissionClient(cluster.ray_dashboard)` in the test process and for
    subprocesses that inherit the environment)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", local_cluster.token)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    _reset_ray_token_cache()
    yield local_cluster
    monkeypatch.undo()
    _reset_ray_token_cache()  # so the next test does not inherit this token


def _reset_ray_token_cache() -> None:
    """Make Ray re-read the token from the environment (it caches it per process)."""
    try:
        from ray._raylet import AuthenticationTokenLoader
    except ImportError:  # pragma: no cover - ray always has it in this project
        return
    AuthenticationTokenLoader.instance().reset_cache()
