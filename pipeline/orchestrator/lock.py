"""One process per run id: `<run>/_LOCK`, taken atomically and kept alive by a heartbeat.

The lock is a small JSON file (host, pid, token, started, heartbeat). It is created
atomically: with `O_CREAT | O_EXCL` on local disks (file://), and on object stores as a
create-if-absent followed by a read-back that must show our own token (the store's last
writer wins, so whoever reads someone else's token lost the race). A heartbeat thread
rewrites the file every `heartbeat_s`; a lock whose heartbeat is older than `stale_s`, or
whose process is gone on this very host, was abandoned (a crash, a kill -9) and is taken
over with a warning. A live lock raises `RunLockedError` naming its holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType

from pipeline.storage import Location

log = logging.getLogger(__name__)

LOCK_NAME = "_LOCK"


class RunLockedError(RuntimeError):
    """Another live process holds the run's lock."""


@dataclass(frozen=True)
class LockInfo:
    """The contents of `_LOCK`."""

    host: str
    pid: int
    token: str
    started: float
    heartbeat: float

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on {self.host} (started {_ago(now - self.started)} ago, "
                f"heartbeat {_ago(now - self.heartbeat)} ago)")


def _ago(seconds: float) -> str:
    return f"{max(seconds, 0.0):.0f} s"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(lock: Location) -> LockInfo | None:
    """The contents of the lock file `lock`, or None when there is no (readable) one."""
    try:
        body = json.loads(lock.read_bytes().decode())
        return LockInfo(host=str(body["host"]), pid=int(body["pid"]), token=str(body["token"]),
                        started=float(body["started"]), heartbeat=float(body["heartbeat"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        # A half-written or foreign file: treat as abandoned (its age decides below).
        return LockInfo(host="?", pid=-1, token="?", started=0.0, heartbeat=0.0)


def abandoned_because(info: LockInfo, now: float, stale_s: float,
                      host: str | None = None) -> str | None:
    """Why the lock `info` may be taken over, or None when its holder looks alive."""
    age = now - info.heartbeat
    if age > stale_s:
        return f"its heartbeat is {age:.0f} s old (lock_stale_s {stale_s:.0f})"
    if info.host == (host or socket.gethostname()) and not _pid_alive(info.pid):
        return f"process {info.pid} no longer exists on this host"
    return None


def lock_of(run: Location) -> Location:
    """The lock file of the run folder `run`."""
    return run / LOCK_NAME


class RunLock:
    """Context manager holding `<run>/_LOCK` for the duration of a run."""

    def __init__(self, run: Location, stale_s: float = 120.0, heartbeat_s: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.lock = lock_of(run)
        self.url = self.lock.url
        self.run_name = run.name
        self.stale_s = stale_s
        # Several heartbeats per stale period, so a slow store never makes a live lock stale.
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(stale_s / 4, 0.05)
        self.clock = clock
        self.fs, self.path = self.lock.filesystem()
        self.local = self.lock.is_local
        self.info: LockInfo | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- acquiring ------------------------------------------------------------------------

    def _new_info(self) -> LockInfo:
        now = self.clock()
        return LockInfo(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                        started=now, heartbeat=now)

    def _create(self, info: LockInfo) -> bool:
        """Create the lock file if absent; True when it is ours afterwards."""
        body = json.dumps(asdict(info), sort_keys=True).encode()
        if self.local:
            os.makedirs(posixpath.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(body)
            return True
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, body)
        found = read_lock(self.lock)
        return found is not None and found.token == info.token

    def _take_over(self, stale: LockInfo, why: str) -> None:
        log.warning("taking over the lock of run %s from %s: %s", self.url,
                    stale.describe(self.clock()), why)
        if self.local:
            # Move the stale file aside under a unique name: of two processes taking over
            # at once only one rename succeeds, and we check that we moved the stale lock,
            # not a fresh one the other process created in between.
            aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                return
            moved = read_lock(self.lock.at(self.lock.url_of(aside)))
            if moved is not None and moved.token != stale.token:
                # Put the fresh lock back (link fails if yet another one exists).
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
            os.remove(aside)
        else:
            self.fs.rm(self.path)

    def acquire(self) -> LockInfo:
        """Take the lock, taking over an abandoned one; `RunLockedError` if it is held."""
        for _ in range(3):
            info = self._new_info()
            if self._create(info):
                self.info = info
                self._start_heartbeat()
                log.info("locked run %s (pid %d on %s, heartbeat every %.1f s)", self.url,
                         info.pid, info.host, self.heartbeat_s)
                return info
            holder = read_lock(self.lock)
            if holder is None:
                continue  # released between our create and our read: try again
            why = abandoned_because(holder, self.clock(), self.stale_s)
            if why is None:
                raise RunLockedError(
                    f"run {self.run_name} is locked by {holder.describe(self.clock())}"
                    f"; wait for it to finish, or remove {self.url} if that process is gone "
                    f"(a lock without heartbeat for {self.stale_s:.0f} s is taken over "
                    "automatically)")
            self._take_over(holder, why)
        raise RunLockedError(f"could not take the lock {self.url}: other processes keep "
                             "taking it; try again")

    # --- holding --------------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat",
                                        daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self.refresh()
            except Exception as exc:  # a flaky store must not kill the run; log and go on
                log.warning("could not refresh the run lock %s: %s", self.url, exc)

    def refresh(self) -> None:
        """Rewrite the heartbeat, unless someone else has taken the lock over."""
        if self.info is None:
            return
        current = read_lock(self.lock)
        if current is None or current.token != self.info.token:
            log.error("the lock %s is no longer ours (held by %s); another process may be "
                      "running this run", self.url,
                      current.describe(self.clock()) if current else "nobody")
            self._stop.set()
            return
        self.info = LockInfo(self.info.host, self.info.pid, self.info.token, self.info.started,
                             self.clock())
        self.lock.write_json(asdict(self.info))

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.info is None:
            return
        current = read_lock(self.lock)
        if current is not None and current.token == self.info.token:
            self.fs.rm(self.path)
        self.info = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
