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
    # An abandoned lock file was last modified at its last heartbeat (the local heartbeat
    # is the file's mtime).
    os.utime(path, (now - age_s, now - age_s))


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


def _race(lock_run: Location, n: int = 8, **kwargs: Any) -> list[RunLock]:
    """Start `n` acquirers of one run at once (threads behind a barrier); the winners."""
    import threading

    barrier = threading.Barrier(n)
    winners: list[RunLock] = []
    errors: list[BaseException] = []

    def contend() -> None:
        lock = RunLock(lock_run, stale_s=60.0, heartbeat_s=30.0, **kwargs)
        barrier.wait()
        try:
            lock.acquire()
            winners.append(lock)
        except RunLockedError:
            pass
        except BaseException as exc:  # anything else is a bug
            errors.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    return winners


def test_racing_acquirers_on_local_disk_exactly_one_wins(tmp_path: Path) -> None:
    run = Location(f"file://{tmp_path}/runs/race")
    for _ in range(3):
        winners = _race(run)
        assert len(winners) == 1
        held = read_lock(lock_of(run))
        assert winners[0].info is not None and held is not None
        assert held.token == winners[0].info.token
        winners[0].release()
        assert read_lock(lock_of(run)) is None


def test_young_empty_lock_is_not_taken_over_old_one_is(tmp_path: Path) -> None:
    # An empty _LOCK is what a creator leaves between O_EXCL and its write: judged by its
    # mtime, it is live until stale (the old code took it over at once).
    run = Location(f"file://{tmp_path}/runs/e")
    lock_file = tmp_path / "runs/e" / LOCK_NAME
    lock_file.parent.mkdir(parents=True)
    lock_file.write_bytes(b"")
    with pytest.raises(RunLockedError, match="run e is locked"):
        RunLock(run, stale_s=60.0).acquire()
    assert lock_file.read_bytes() == b""
    old = time.time() - 300
    os.utime(lock_file, (old, old))
    with RunLock(run, stale_s=60.0) as lock:
        held = read_lock(lock_of(run))
        assert lock.info is not None and held is not None and held.token == lock.info.token


def test_takeover_removes_only_the_lock_it_judged_abandoned(tmp_path: Path) -> None:
    # The holder heartbeats (mtime moves) after a taker read it stale: the taker's delete
    # must fail and leave the live lock in place.
    from pipeline.orchestrator.lock import _store_for

    run = Location(f"file://{tmp_path}/runs/k")
    lock_file = tmp_path / "runs/k" / LOCK_NAME
    _plant(lock_file, "other-host", age_s=300.0)
    old = time.time() - 300
    os.utime(lock_file, (old, old))
    store = _store_for(lock_of(run), 0.0)
    seen = store.read()
    assert seen is not None
    os.utime(lock_file)  # the holder's heartbeat lands in between
    assert store.delete(seen) is False
    assert lock_file.exists() and not list(lock_file.parent.glob("_LOCK.stale-*"))
    assert store.delete(store.read()) is True  # type: ignore[arg-type]
    assert not lock_file.exists()


def test_lost_lock_stops_the_next_publish(tmp_path: Path, graph: Any,
                                          make_cfg: Callable[..., Any]) -> None:
    from pipeline.orchestrator import LockLostError, Stage, StageContext, StageResult
    from pipeline.storage import is_published

    cfg = make_cfg()
    run_dir = Path(cfg.storage.root.replace("file://", "")) / "runs" / cfg.run_id
    foreign = {"host": "elsewhere", "pid": 4242, "token": "theirs", "started": time.time(),
               "heartbeat": time.time()}

    def taken_over(ctx: StageContext) -> StageResult:
        # Meanwhile another process judged our lock stale and took it over.
        (run_dir / LOCK_NAME).write_text(json.dumps(foreign))
        fs, path = ctx.output.filesystem()
        fs.pipe_file(f"{path}/x.txt", b"x")
        return StageResult(row_counts={"x": 1}, summary="x")

    def never(ctx: StageContext) -> StageResult:
        raise AssertionError("ran after the lock was lost")

    stages = [Stage(name="first", run=taken_over, config_of=lambda c: {}),
              Stage(name="second", run=never, config_of=lambda c: {}, inputs=("first",))]
    with pytest.raises(LockLostError, match=r"lost its lock .*held by pid 4242 on elsewhere"):
        run_pipeline(cfg, stages)
    run = Location(f"file://{run_dir}")
    assert not is_published(run / "first")
    # The new holder's lock is left alone (not released by us).
    assert json.loads((run_dir / LOCK_NAME).read_text())["token"] == "theirs"
    # The staging folder with the lost attempt's files is left for the new holder to clean.
    assert list((run_dir / "_staging").glob("first-*"))


def test_heartbeat_that_finds_the_lock_lost_fences_publication(tmp_path: Path) -> None:
    from pipeline.orchestrator import LockLostError

    run = Location(f"file://{tmp_path}/runs/h")
    lock = RunLock(run, stale_s=60.0, heartbeat_s=0.05)
    lock.acquire()
    try:
        lock.check()  # ours: no error
        (tmp_path / "runs/h" / LOCK_NAME).unlink()
        deadline = time.time() + 5
        while lock.lost is None and time.time() < deadline:
            time.sleep(0.02)
        assert lock.lost is not None
        with pytest.raises(LockLostError, match="lost its lock"):
            lock.check()
    finally:
        lock.release()
    assert not (tmp_path / "runs/h" / LOCK_NAME).exists()
