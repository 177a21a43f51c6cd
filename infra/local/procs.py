"""Process, port and HTTP helpers for the local cluster script (standard library only).

Every daemon is started in a new session, so its process id is also the id of a process
group that holds everything it forks (Ray's `ray start --block` keeps its GCS, raylet,
dashboard and workers in that group). Stopping a daemon means signalling that group and
then checking, through /proc, that no member is left. A process is identified by its pid
*and* its start time (field 22 of /proc/<pid>/stat), so a recycled pid is never taken for
one of ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


class ClusterError(RuntimeError):
    """A cluster component did not start, or did not stop, as expected."""


def free_port(host: str) -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(host: str, count: int) -> list[int]:
    """`count` distinct free ports on `host` (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid` in clock ticks, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has exited; only its exit status is left
        return None
    return int(fields[19])


def is_alive(pid: int, started: int) -> bool:
    """True if the process `pid` that started at `started` is still running."""
    return start_time(pid) == started


def _table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, process group, start time) of every live, non-zombie process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def owned_processes(pgid: int, started: int) -> dict[int, int]:
    """pid -> start time of the processes of the daemon we started as (`pgid`, `started`):
    the members of its process group and every descendant of theirs. (Ray's raylet puts
    each worker in a group of its own, so the group alone does not find them.)

    While the leader lives its start time proves the group is ours. Once it has died the
    kernel cannot hand its pid to a new process while any member still uses it as a group
    id, so the remaining members are ours too. Descendants that outlive their parent are
    re-parented and no longer found: callers keep what they saw (see `_reap`)."""
    table = _table()
    leader = table.get(pgid)
    if leader is not None and leader[2] != started:
        return {}  # the pid now belongs to some other process: our group is gone
    found = {pid for pid, (_, group, _) in table.items() if group == pgid}
    frontier = set(found)
    while frontier:
        frontier = {pid for pid, (parent, _, _) in table.items()
                    if parent in frontier and pid not in found}
        found |= frontier
    return {pid: table[pid][2] for pid in found}


def spawn(cmd: Sequence[str], log_path: Path, env: Mapping[str, str],
          cwd: Path | None = None) -> tuple[int, int]:
    """Start `cmd` detached in its own session, output appended to `log_path`.

    Returns (pid, start time). The process outlives this script; stop it with
    `stop_group`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd,
                                start_new_session=True)
    started = None
    for _ in range(100):  # /proc/<pid> appears as soon as fork returns; be patient anyway
        started = start_time(proc.pid)
        if started is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    if started is None:
        raise ClusterError(f"{cmd[0]} exited at once (status {proc.poll()})\n"
                           f"{tail(log_path)}")
    return proc.pid, started


def _signal_all(procs: Mapping[int, int], sig: signal.Signals) -> None:
    for pid, started in procs.items():
        if is_alive(pid, started):  # never signal a pid that was recycled meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _reap(groups: Sequence[tuple[int, int]], seen: dict[int, int],
          sig: signal.Signals | None, wait_s: float) -> dict[int, int]:
    """Wait until all of `seen` and of the daemons' groups are gone (re-scanning for new
    processes, signalling them with `sig` if given) or `wait_s` passes; returns the
    ones still alive."""
    deadline = time.monotonic() + wait_s
    while True:
        for pgid, started in groups:
            seen.update(owned_processes(pgid, started))
        left = {pid: st for pid, st in seen.items() if is_alive(pid, st)}
        if not left or time.monotonic() > deadline:
            return left
        if sig is not None:
            _signal_all(left, sig)
        time.sleep(0.2)


def stop_groups(groups: Sequence[tuple[int, int]], grace_s: float = 10.0) -> list[int]:
    """SIGTERM the processes of every daemon in `groups` ((pgid, start time) each) at
    once, wait up to `grace_s`, SIGKILL what is left, and verify that nothing is.

    Returns the pids that were signalled. Raises ClusterError if one survives."""
    seen: dict[int, int] = {}
    for pgid, started in groups:
        seen.update(owned_processes(pgid, started))
    if not seen:
        return []
    _signal_all(seen, signal.SIGTERM)
    if _reap(groups, seen, None, grace_s):
        kill_groups(groups, seen=seen)
    return sorted(seen)


def kill_groups(groups: Sequence[tuple[int, int]], wait_s: float = 10.0,
                seen: dict[int, int] | None = None) -> list[int]:
    """SIGKILL every process of the daemons at once (a crash, not a shutdown) and verify
    that none is left. Returns the pids killed."""
    seen = dict(seen or {})
    for pgid, started in groups:
        seen.update(owned_processes(pgid, started))
    _signal_all(seen, signal.SIGKILL)
    left = _reap(groups, seen, signal.SIGKILL, wait_s)
    if left:
        raise ClusterError(f"processes {sorted(left)} survived SIGKILL for {wait_s:.0f} s")
    return sorted(seen)


def tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, framed with its path, for error messages."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return f"--- last {len(text)} lines of {path} ---\n" + "\n".join(text)


def wait_until(check: Callable[[], Any], what: str, timeout_s: float, log_path: Path,
               alive: Callable[[], bool] | None = None) -> Any:
    """Poll `check()` until it returns a truthy value; raise ClusterError with the log tail
    after `timeout_s`, or at once if `alive()` says the process died."""
    started = time.monotonic()
    while True:
        result = check()
        if result:
            return result
        if alive is not None and not alive():
            raise ClusterError(f"{what}: the process exited\n{tail(log_path)}")
        elapsed = time.monotonic() - started
        if elapsed > timeout_s:
            raise ClusterError(f"{what}: not ready after {timeout_s:.0f} s\n{tail(log_path)}")
        time.sleep(0.5)


def http_get(url: str, token: str | None = None, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET `url` (optionally with a bearer token); (status, body), status 0 if unreachable."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, ""


def http_json(url: str, token: str | None = None) -> Any:
    """GET `url` and parse JSON; None unless the answer is 200 with valid JSON."""
    status, body = http_get(url, token)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def log_contains(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(errors="replace")
    except OSError:
        return False
