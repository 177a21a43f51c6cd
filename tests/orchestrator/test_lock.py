from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.orchestrator import RunLockedError, run_pipeline
from pipeline.orchestrator.lock import LOCK_NAME, RunLock, lock_of, read_lock
from pipeline.storage import Location

pytestmark = pytest.mark.unit

HOLDER = """
import sys
from pipeline.orchestrator.lock import RunLock
from pipeline.storage import Location
lock = RunLock(Location(sys.argv[1]), stale_s=60.0, heartbeat_s=0.1)
lock.acquire()
print("locked", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


def _holder(run: Location) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, run.url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_two_processes_cannot_hold_one_run(tmp_path: Path, graph: Any,
                                           make_cfg: Callable[..., Any],
                                           caplog: pytest.LogCaptureFixture) -> None:
    run = Location(f"file://{tmp_path}/runs/t")
    proc = _holder(run)
    try:
        with pytest.raises(RunLockedError, match=rf"run t is locked by pid {proc.pid} on "):
            RunLock(run, stale_s=60.0).acquire()
        with pytest.raises(RunLockedError):
            run_pipeline(make_cfg(), graph.stages())
        assert graph.calls == []
        # The holder's heartbeat moves while it holds the lock.
        first = read_lock(lock_of(run))
        time.sleep(0.4)
        later = read_lock(lock_of(run))
        assert first is not None and later is not None and later.heartbeat > first.heartbeat
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout is not None and proc.stdout.readline().strip() == "released"
    finally:
        proc.kill()
        proc.wait()
    assert not (tmp_path / "runs/t" / LOCK_NAME).exists()
    # A holder killed with -9 leaves its lock behind; its pid is gone, so it is taken over.
    proc = _holder(run)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "runs/t" / LOCK_NAME).exists()
    with caplog.at_level("WARNING", logger="pipeline.orchestrator.lock"):
        run_pipeline(make_cfg(), graph.stages())
    assert f"process {proc.pid} no longer exists on this host" in caplog.text
    assert not (tmp_path / "runs/t" / LOCK_NAME).exists()  # released in finally


def _plant(path: Path, host: str, age_s: float) -> None:
    now = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": 1, "token": "old", "started": now - age_s,
                                "heartbeat": now - age_s}))


def test_stale_lock_is_taken_over_live_one_is_not(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    run = Location(f"file://{tmp_path}/runs/r")
    lock_file = tmp_path / "runs/r" / LOCK_NAME
    _plant(lock_file, "other-host", age_s=5.0)
    with pytest.raises(RunLockedError, match="locked by pid 1 on other-host"):
        RunLock(run, stale_s=60.0).acquire()
    _plant(lock_file, "other-host", age_s=300.0)
    with caplog.at_level("WARNING", logger="pipeline.orchestrator.lock"), \
            RunLock(run, stale_s=60.0) as lock:
        assert lock.info is not None
        held = read_lock(lock_of(run))
        assert held is not None and held.token == lock.info.token
        assert held.host == socket.gethostname() and held.pid == os.getpid()
    assert "its heartbeat is 300 s old (lock_stale_s 60)" in caplog.text
    assert not lock_file.exists()
    assert not list(lock_file.parent.glob("_LOCK.stale-*"))


def test_object_store_lock_reads_back(tmp_path: Path) -> None:
    run = Location(f"memory://{tmp_path.name}/runs/m")
    with RunLock(run, stale_s=60.0):
        with pytest.raises(RunLockedError, match="run m is locked"):
            RunLock(run, stale_s=60.0).acquire()
        assert read_lock(lock_of(run)) is not None
    assert read_lock(lock_of(run)) is None
