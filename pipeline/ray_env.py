"""Starting or joining Ray: in-process local mode for laptops and tests, or a cluster.

Local mode keeps every Ray address on 127.0.0.1 (this workplace, like many secured hosts,
allows only loopback traffic): `ray.init` gets `_node_ip_address="127.0.0.1"`, and the
variables of `local_ray_env` are set before Ray starts, so the raylet and every worker it
spawns inherit them (Ray Train's MASTER_ADDR comes from a worker's
`ray.util.get_node_ip_address()`). The variable alone is not enough: Ray reads
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` once, when `ray` is first imported, and the local path
often imports Ray before calling `init_ray` (`pipeline.train.trainer.train_task` imports
`ray.train` first), so `init_ray` also brings this process's copy of the flag in line with
the variable (`_sync_cluster_flag`) before passing the node IP.

Joining a cluster (`ray.address`) sends the token of the variable the config names
(`ray.auth_token_env`): Ray reads `RAY_AUTH_MODE` / `RAY_AUTH_TOKEN` into a cache at import,
so they are set and Ray's cached config is refreshed before `ray.init`. A non-local address
without a token is refused; a token over a connection without TLS to a non-local address is
sent with a warning. The token is never logged.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import RayConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class InsecureRayAddressError(ValueError):
    """A non-local Ray cluster address without token authentication configured."""


def local_ray_env() -> dict[str, str]:
    """Environment that keeps a local Ray (and Ray Train's MASTER_ADDR) on 127.0.0.1.

    It also leaves out Ray Train's preemption watcher, an actor (one more process to start
    per `fit`) that listens for cloud spot-instance notices a single machine never gets,
    and shortens the Train controller's poll of its workers from 2 s to 0.25 s: the
    controller notices that training finished only at its next poll, which cost every
    local `fit` about 4 s of idle tail (two polls), while polling two local workers four
    times a second costs nothing measurable.

    Ray Data's Parquet reader lists files by reading their footers on a pool of
    `FooterReader` actors, 32 of them per read (`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`):
    32 worker processes to start for every `read_parquet`, however few the files. On one
    machine one actor (128 I/O threads) reads every footer a local folder has; measured on
    2 cores, a 1,000-row read went from about 18 s to 4 s.

    Set before Ray starts, so the Train controller and Ray Data's tasks inherit them; a
    variable the user set wins (`setdefault`)."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
            "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": "1"}


#: local_ray_env settings that stay off when joining a cluster: its address must be the
#: node's real one, and its controller's poll interval and Ray Data's footer readers are
#: the cluster's own business
_LOCAL_ONLY = frozenset({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S",
                         "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"})


def is_local_address(address: str) -> bool:
    """True for localhost and 127.0.0.0/8 (or ::1), with or without a scheme or port."""
    host = urlsplit(address if "://" in address else f"http://{address}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: not provably local
        return False


def warn_if_plaintext(address: str, what: str) -> None:
    """Warn when a token would travel unencrypted to a non-loopback `address`: an
    http:// URL, or Ray's gRPC without TLS (`RAY_USE_TLS`). Never names the token."""
    if is_local_address(address):
        return
    scheme = address.split("://", 1)[0].lower() if "://" in address else ""
    tls = os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true")
    if scheme == "http" or (scheme in ("", "ray") and not tls):
        log.warning("the %s is sent without encryption to %s (%s); anyone on the network "
                    "path can read it: use https:// (or RAY_USE_TLS=1 for ray:// and GCS "
                    "addresses)", what, address,
                    "plain http://" if scheme == "http" else "no TLS")


def _has_token_file(environ: MutableMapping[str, str]) -> bool:
    path = environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def _enable_token_auth(token: str, environ: MutableMapping[str, str]) -> None:
    """Make this process's Ray send `token`: the variables, then Ray's cached config."""
    mode = environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        log.warning("RAY_AUTH_MODE=%s is set explicitly: the Ray token is not sent", mode)
        return
    environ["RAY_AUTH_MODE"] = "token"
    environ["RAY_AUTH_TOKEN"] = token
    try:  # the same refresh Ray does when it enables token auth itself
        raylet: Any = importlib.import_module("ray._raylet")  # no stubs for these
        raylet.Config.initialize("")
        raylet.AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError) as exc:  # another Ray version: say so, go on
        log.warning("could not refresh Ray's authentication settings (%s); if joining fails "
                    "with an authentication error, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                    "before starting the process", exc)


def _sync_cluster_flag() -> None:
    """Make this process's Ray honour `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` as it is now.

    Ray evaluates the variable once, when `ray` is first imported, into
    `ray_constants.ENABLE_RAY_CLUSTER`; when Ray was imported before `init_ray` set it, the
    driver still resolves its node IP (even an explicit 127.0.0.1, through
    `resolve_ip_for_localhost`) to the machine's outward address. Re-read it the way Ray
    does (`env_bool`: "1"/"true" enable)."""
    try:
        from ray._private import ray_constants
    except ImportError:  # another Ray layout: the environment variable has to do
        return
    value = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    if value is not None:
        ray_constants.ENABLE_RAY_CLUSTER = value.lower() in ("1", "true")


def init_ray(cfg: RayConfig, **kwargs: Any) -> None:
    """Initialize Ray once per process according to `cfg` (no-op if already initialized).

    With `RAY_ADDRESS` set (Ray sets it for a job's driver) the process joins that cluster
    whatever `cfg.address` says: a job must use the cluster it was submitted to. With
    `cfg.address` it joins that cluster with the token of `cfg.auth_token_env`; otherwise it
    starts a local Ray bound to 127.0.0.1."""
    environ = os.environ
    joining = bool(environ.get("RAY_ADDRESS")) or cfg.address is not None
    # Before `import ray` wherever this is the first import; the raylet and its workers
    # inherit the environment either way. Only a local Ray is kept off the outward address.
    for key, value in local_ray_env().items():
        if not joining or key not in _LOCAL_ONLY:
            environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    if environ.get("RAY_ADDRESS"):
        # Inside a Ray job (or a shell pointed at a cluster): join that cluster, never a
        # new local Ray beside it. The job's environment holds the cluster's token.
        ray.init(address="auto", **kwargs)
        log.info("joined the Ray cluster of this job (%s CPUs)",
                 ray.cluster_resources().get("CPU"))
        return
    if cfg.address is None:
        _sync_cluster_flag()
        kwargs.setdefault("_node_ip_address", LOOPBACK)
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True,
                 configure_logging=False, **kwargs)
        log.info("started local Ray with %s CPUs on %s", ray.cluster_resources().get("CPU"),
                 LOOPBACK)
        return
    token = environ.get(cfg.auth_token_env) or None
    if token is not None:
        _enable_token_auth(token, environ)
        warn_if_plaintext(cfg.address, f"Ray token ({cfg.auth_token_env})")
    elif not is_local_address(cfg.address) and not _has_token_file(environ):
        raise InsecureRayAddressError(
            f"refusing to join the Ray cluster at {cfg.address!r}: it is not a local address "
            f"(127.0.0.0/8) and no token is configured; set the cluster's token in the "
            f"environment variable {cfg.auth_token_env} (ray.auth_token_env)")
    ray.init(address=cfg.address, **kwargs)
    log.info("joined Ray cluster at %s (%s CPUs)", cfg.address,
             ray.cluster_resources().get("CPU"))
