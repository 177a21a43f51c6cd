"""One process per run id: `<run>/_LOCK`, taken atomically, kept alive by a heartbeat, and
checked before every publication (fencing).

The lock is a small JSON file (host, pid, token, started, heartbeat). Every change to it is
conditional on what was last observed, on each kind of store (`_store_for`):

- local disks (file://): created with `O_CREAT | O_EXCL`; the heartbeat bumps the file's
  mtime after checking the token; a takeover renames the observed file aside (atomic: only
  one taker wins), checks that what it moved is byte for byte, mtime for mtime, the lock it
  judged abandoned, and puts it back (`link`, which never overwrites) otherwise.
- S3 (s3://, s3a://): created with a conditional PUT (`If-None-Match: *`); heartbeats and
  deletes carry `If-Match: <ETag>` of the observed lock, so nobody overwrites or deletes a
  lock that changed since they read it. (AWS S3 and moto honour both; an S3-compatible store
  that ignores them degrades to the best-effort scheme below.)
- other fsspec stores (gs://, az://, memory://...): no conditional create is used, so the
  lock is best effort: create-if-absent, read back, wait `settle_s` and read back again; two
  processes starting within the same moment may still both pass. A warning says so once.

A lock whose age (its heartbeat, or its mtime when that is newer or the file is empty or
unreadable: a creator between `O_EXCL` and its write) exceeds `stale_s`, or whose process
is gone on this very host, was abandoned (a crash, a kill -9) and is taken over with a
warning. A live lock raises `RunLockedError` naming its holder.

Fencing: the heartbeat thread notes when the lock is no longer ours; `RunLock.check` (the
runner calls it before a stage writes to its staging folder, before it publishes and before
it writes run.json) raises `LockLostError` then, or when the lock cannot be shown to be ours
(another process's token in the file, or no successful heartbeat for `stale_s`). A run that
lost its lock stops before its next publication instead of overwriting the new holder's work.
"""

from __future__ import annotations

import contextlib
import hashlib
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
from datetime import datetime
from types import TracebackType
from typing import Any

from fsspec import AbstractFileSystem

from pipeline.storage import Location

log = logging.getLogger(__name__)

LOCK_NAME = "_LOCK"


class RunLockedError(RuntimeError):
    """Another live process holds the run's lock."""


class LockLostError(RunLockedError):
    """This process no longer holds its run's lock (taken over, removed, or unprovable):
    it must not publish anything more."""


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


# --- the lock file on each kind of store ---------------------------------------------------

@dataclass(frozen=True)
class Observed:
    """The lock file as read once: its bytes, a version tag (the S3 ETag, else a digest of
    the bytes) and its modification time (None when the store does not say)."""

    body: bytes
    version: str
    mtime: float | None
    #: the mtime is the heartbeat (local disks); elsewhere the heartbeat is in the body
    mtime_beats: bool = False


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _mtime_of(info: dict[str, Any]) -> float | None:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


class _Store:
    """Best-effort lock operations on any fsspec store (no conditional writes)."""

    #: whether creating and changing the lock are atomic and conditional on this store
    conditional = False

    def __init__(self, fs: AbstractFileSystem, path: str, settle_s: float) -> None:
        self.fs = fs
        self.path = path
        self.settle_s = settle_s

    def read(self) -> Observed | None:
        with contextlib.suppress(Exception):
            self.fs.invalidate_cache(self.path)
        try:
            body = bytes(self.fs.cat_file(self.path))
            info = self.fs.info(self.path)
        except FileNotFoundError:
            return None
        return Observed(body, _digest(body), _mtime_of(info))

    def create(self, body: bytes) -> bool:
        try:
            try:
                self.fs.pipe_file(self.path, body, mode="create")
            except TypeError:  # an implementation without `mode`
                if self.fs.exists(self.path):
                    return False
                self.fs.pipe_file(self.path, body)
        except FileExistsError:
            return False
        # No atomic create here: whoever wrote last wins, so read back, let a racing
        # writer's PUT land, and read back again.
        for pause in (0.0, self.settle_s):
            time.sleep(pause)
            seen = self.read()
            if seen is None or seen.body != body:
                return False
        return True

    def beat(self, seen: Observed, body: bytes) -> Observed | None:
        now = self.read()
        if now is None or now.version != seen.version:
            return None
        self.fs.pipe_file(self.path, body)
        return self.read()

    def delete(self, seen: Observed) -> bool:
        now = self.read()
        if now is None or now.version != seen.version:
            return False
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self.path)
        return True


class _LocalStore(_Store):
    """A local disk: O_EXCL create, mtime heartbeats, rename-aside takeover."""

    conditional = True

    def read(self) -> Observed | None:
        try:
            with open(self.path, "rb") as fh:
                body = fh.read()
                mtime = os.fstat(fh.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return Observed(body, _digest(body), mtime, mtime_beats=True)

    def create(self, body: bytes) -> bool:
        os.makedirs(posixpath.dirname(self.path), exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        return True

    def beat(self, seen: Observed, body: bytes) -> Observed | None:
        # The content stays; the mtime is the heartbeat. A taker that moved the file aside
        # in between sees the newer mtime and puts it back (see `delete`).
        now = self.read()
        if now is None or now.body != seen.body:
            return None
        try:
            os.utime(self.path)
        except FileNotFoundError:
            return None
        return self.read()

    def delete(self, seen: Observed) -> bool:
        # Of two processes removing at once only one rename succeeds; the mover then checks
        # that it moved exactly the lock it observed, and puts anything else back (link
        # never overwrites a lock created in between).
        aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as fh:
                moved = Observed(fh.read(), "", os.fstat(fh.fileno()).st_mtime)
            if moved.body != seen.body or moved.mtime != seen.mtime:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                return False
            return True
        finally:
            os.remove(aside)


def _precondition_failed(exc: BaseException) -> bool:
    """True when `exc` (as s3fs raises it) is S3's 412 Precondition Failed."""
    for err in (exc, exc.__cause__, exc.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
                    409, 412):
                return True
    return False


class _S3Store(_Store):
    """S3: conditional PUT (If-None-Match: *) to create, If-Match: ETag to change."""

    conditional = True

    def _split(self) -> tuple[str, str]:
        bucket, key, _ = self.fs.split_path(self.path)
        return str(bucket), str(key)

    def read(self) -> Observed | None:
        self.fs.invalidate_cache(self.path)
        try:
            info = self.fs.info(self.path)
            body = bytes(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        # ETag from the HEAD before the GET: if the object changed in between, a later
        # If-Match fails and we read again; never the other way round.
        return Observed(body, str(info.get("ETag", "")), _mtime_of(info))

    def create(self, body: bytes) -> bool:
        try:
            self.fs.pipe_file(self.path, body, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        # Backstop for S3-compatible stores that ignore If-None-Match: read back.
        seen = self.read()
        return seen is not None and seen.body == body

    def _conditional(self, method: str, seen: Observed, **kwargs: Any) -> dict[str, Any] | None:
        bucket, key = self._split()
        try:
            out = self.fs.call_s3(method, Bucket=bucket, Key=key, IfMatch=seen.version,
                                  **kwargs)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if _precondition_failed(exc):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self.path)
        return dict(out)

    def beat(self, seen: Observed, body: bytes) -> Observed | None:
        out = self._conditional("put_object", seen, Body=body)
        if out is None:
            return None
        return Observed(body, str(out.get("ETag", "")), time.time())

    def delete(self, seen: Observed) -> bool:
        return self._conditional("delete_object", seen) is not None


_WARNED: set[str] = set()


def _store_for(lock: Location, settle_s: float, warn: bool = False) -> _Store:
    """The lock operations for `lock`'s store; `warn`: say once per protocol when they are
    only best effort there (a process about to take the lock wants to know)."""
    fs, path = lock.filesystem()
    if lock.is_local:
        return _LocalStore(fs, path, settle_s)
    if lock.protocol in ("s3", "s3a"):
        return _S3Store(fs, path, settle_s)
    if warn and lock.protocol not in _WARNED:
        _WARNED.add(lock.protocol)
        log.warning("storage %s:// offers the run lock no conditional create: it is best "
                    "effort there (two processes starting the same run id at the same "
                    "moment may both run); start one process per run id", lock.protocol)
    return _Store(fs, path, settle_s)


# --- reading a lock ------------------------------------------------------------------------

def _info_of(seen: Observed) -> LockInfo:
    """The LockInfo of an observed lock. On local disks its age is the newer of the
    heartbeat it records and its mtime (the heartbeat touches the file). A file that does
    not parse (empty: its creator is between create and write; half-written; foreign) is
    judged by its mtime alone."""
    mtime = seen.mtime
    try:
        body = json.loads(seen.body.decode())
        info = LockInfo(host=str(body["host"]), pid=int(body["pid"]), token=str(body["token"]),
                        started=float(body["started"]), heartbeat=float(body["heartbeat"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        # mtime unknown: treat it as fresh, so an unreadable lock is never taken over
        # blindly (remove it by hand); stores without mtimes write atomically anyway.
        at = mtime if mtime is not None else time.time()
        return LockInfo(host="?", pid=-1, token="?", started=at, heartbeat=at)
    if seen.mtime_beats and mtime is not None and mtime > info.heartbeat:
        info = LockInfo(info.host, info.pid, info.token, info.started, mtime)
    return info


def read_lock(lock: Location) -> LockInfo | None:
    """The contents of the lock file `lock`, or None when there is none."""
    seen = _store_for(lock, 0.0).read()
    return _info_of(seen) if seen is not None else None


def abandoned_because(info: LockInfo, now: float, stale_s: float,
                      host: str | None = None) -> str | None:
    """Why the lock `info` may be taken over, or None when its holder looks alive."""
    age = now - info.heartbeat
    if age > stale_s:
        return f"its heartbeat is {age:.0f} s old (lock_stale_s {stale_s:.0f})"
    if info.pid > 0 and info.host == (host or socket.gethostname()) and not _pid_alive(info.pid):
        return f"process {info.pid} no longer exists on this host"
    return None


def lock_of(run: Location) -> Location:
    """The lock file of the run folder `run`."""
    return run / LOCK_NAME


class RunLock:
    """Context manager holding `<run>/_LOCK` for the duration of a run."""

    def __init__(self, run: Location, stale_s: float = 120.0, heartbeat_s: float | None = None,
                 clock: Callable[[], float] = time.time, settle_s: float = 1.0) -> None:
        self.lock = lock_of(run)
        self.url = self.lock.url
        self.run_name = run.name
        self.stale_s = stale_s
        # Several heartbeats per stale period, so a slow store never makes a live lock stale.
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else max(stale_s / 4, 0.05)
        self.clock = clock
        self.store = _store_for(self.lock, settle_s, warn=True)
        self.info: LockInfo | None = None
        #: why the lock is no longer ours (set by the heartbeat or `check`), or None
        self.lost: str | None = None
        self._seen: Observed | None = None
        self._beaten = 0.0  # clock() of the last heartbeat that landed
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- acquiring ------------------------------------------------------------------------

    def _new_info(self) -> LockInfo:
        now = self.clock()
        return LockInfo(host=socket.gethostname(), pid=os.getpid(), token=uuid.uuid4().hex,
                        started=now, heartbeat=now)

    @staticmethod
    def _body(info: LockInfo) -> bytes:
        return json.dumps(asdict(info), sort_keys=True).encode()

    def acquire(self) -> LockInfo:
        """Take the lock, taking over an abandoned one; `RunLockedError` if it is held."""
        for _ in range(3):
            info = self._new_info()
            body = self._body(info)
            if self.store.create(body):
                seen = self.store.read()
                if seen is None or seen.body != body:
                    continue  # taken over at once (cannot happen unless stale_s ~ 0)
                self.info, self._seen, self._beaten, self.lost = info, seen, self.clock(), None
                self._start_heartbeat()
                log.info("locked run %s (pid %d on %s, heartbeat every %.1f s)", self.url,
                         info.pid, info.host, self.heartbeat_s)
                return info
            seen = self.store.read()
            if seen is None:
                continue  # released between our create and our read: try again
            holder = _info_of(seen)
            why = abandoned_because(holder, self.clock(), self.stale_s)
            if why is None:
                raise RunLockedError(
                    f"run {self.run_name} is locked by {holder.describe(self.clock())}"
                    f"; wait for it to finish, or remove {self.url} if that process is gone "
                    f"(a lock without heartbeat for {self.stale_s:.0f} s is taken over "
                    "automatically)")
            log.warning("taking over the lock of run %s from %s: %s", self.url,
                        holder.describe(self.clock()), why)
            # Only the exact lock judged abandoned is removed: if its holder came back to
            # life (a heartbeat) or someone else took it over meanwhile, this fails.
            self.store.delete(seen)
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
            except Exception as exc:  # a flaky store must not kill the run; `check` decides
                log.warning("could not refresh the run lock %s: %s", self.url, exc)

    def _mark_lost(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
            log.error("the lock %s is no longer ours: %s; this process publishes nothing more",
                      self.url, why)
        self._stop.set()

    def refresh(self) -> None:
        """Renew the heartbeat if the lock is still exactly the one we hold; note it lost
        otherwise (the run stops at its next `check`)."""
        with self._mutex:
            if self.info is None or self._seen is None or self.lost is not None:
                return
            now = self.clock()
            info = LockInfo(self.info.host, self.info.pid, self.info.token, self.info.started,
                            now)
            seen = self.store.beat(self._seen, self._body(info))
            if seen is None:
                current = self.store.read()
                holder = _info_of(current).describe(self.clock()) if current else "nobody"
                self._mark_lost(f"now held by {holder}")
                return
            self.info, self._seen, self._beaten = info, seen, now

    def check(self) -> None:
        """Raise `LockLostError` unless this process provably still holds the lock (call it
        right before writing anything a second writer could clobber)."""
        if self.info is None:
            return
        if self.lost is None:
            if self.clock() - self._beaten > self.stale_s / 2:
                # Heartbeats have not landed for a while (a stalled process or store): renew
                # now, conditionally, rather than trust an old observation.
                with contextlib.suppress(Exception):
                    self.refresh()
            if self.lost is None and self.clock() - self._beaten > self.stale_s:
                self._mark_lost(f"no heartbeat landed for {self.clock() - self._beaten:.0f} s "
                                f"(lock_stale_s {self.stale_s:.0f}): another process may have "
                                "taken it over")
            current = self.store.read() if self.lost is None else None
            if self.lost is None and (current is None or _info_of(current).token
                                      != self.info.token):
                holder = (_info_of(current).describe(self.clock()) if current is not None
                          else "nobody (the file is gone)")
                self._mark_lost(f"now held by {holder}")
        if self.lost is not None:
            raise LockLostError(
                f"run {self.run_name} lost its lock {self.url} ({self.lost}); stopped before "
                "publishing so as not to overwrite another process's work; check "
                "`pipeline status` and rerun when the run is free")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if self.info is None:
            return
        with self._mutex:
            current = self.store.read()
            if (self.lost is None and current is not None
                    and _info_of(current).token == self.info.token):
                self.store.delete(current)
            self.info, self._seen = None, None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
