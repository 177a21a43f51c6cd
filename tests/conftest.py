"""Shared fixtures: one local Spark session and one local Ray per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

# Everything stays on loopback: Spark binds 127.0.0.1, Ray keeps its addresses local.
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """A `local[2,2]` SparkSession (2 threads, each task retried twice) bound to 127.0.0.1."""
    from pipeline.config import SparkConfig
    from pipeline.spark import get_spark

    session = get_spark(SparkConfig(master="local[2,2]", shuffle_partitions=2,
                                    app_name="pipeline-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """An in-process Ray with 2 CPUs, shut down at the end of the session."""
    import ray

    from pipeline.config import RayConfig
    from pipeline.ray_env import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests on machines without CUDA, saying why."""
    _skip_gpu_without_cuda(items)


def _skip_gpu_without_cuda(items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
