"""Starting or joining Ray: in-process local mode for laptops and tests, or a cluster.

Local mode keeps every Ray address on 127.0.0.1 (this workplace, like many secured hosts,
allows only loopback traffic). Joining a cluster requires token authentication; the token
is read from the environment variable the config names and never logged.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline.config import RayConfig

log = logging.getLogger(__name__)


def local_ray_env() -> dict[str, str]:
    """Environment that keeps a local Ray (and Ray Train's MASTER_ADDR) on 127.0.0.1."""
    return {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def init_ray(cfg: RayConfig, **kwargs: Any) -> None:
    """Initialize Ray once per process according to `cfg` (no-op if already initialized).

    With `RAY_ADDRESS` set (Ray sets it for a job's driver) the process joins that cluster
    whatever `cfg.address` says: a job must use the cluster it was submitted to."""
    import ray

    if ray.is_initialized():
        return
    for key, value in local_ray_env().items():
        os.environ.setdefault(key, value)
    if os.environ.get("RAY_ADDRESS"):
        # Inside a Ray job (or a shell pointed at a cluster): join that cluster, never a
        # new local Ray beside it. The job's environment holds the cluster's token.
        ray.init(address="auto", **kwargs)
        log.info("joined the Ray cluster of this job (%s CPUs)",
                 ray.cluster_resources().get("CPU"))
        return
    if cfg.address is None:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True,
                 configure_logging=False, **kwargs)
        log.info("started local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
        return
    token = os.environ.get(cfg.auth_token_env)
    if token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_AUTH_TOKEN", token)
    ray.init(address=cfg.address, **kwargs)
    log.info("joined Ray cluster at %s (%s CPUs)", cfg.address,
             ray.cluster_resources().get("CPU"))
