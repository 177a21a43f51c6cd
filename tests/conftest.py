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


#: test modules that take minutes, started first so that `make test`'s two workers end
#: together (the cluster tests share one set of clusters: they are one unit)
_LONG_FIRST = ("tests/cluster/", "tests/test_e2e.py", "tests/train/test_fault_tolerance.py",
               "tests/storage_s3/test_graph_s3.py", "tests/evaluate/test_evaluate_stage.py",
               "tests/train/test_fraud_task.py", "tests/orchestrator/test_backends.py")


def _unit_of(item: pytest.Item) -> str:
    path = item.nodeid.split("::", 1)[0]
    return "tests/cluster/" if path.startswith("tests/cluster/") else path


def _rank(item: pytest.Item) -> int:
    unit = _unit_of(item)
    return next((i for i, p in enumerate(_LONG_FIRST) if unit.startswith(p)),
                len(_LONG_FIRST))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """For pytest-xdist (`make test` runs `-n 2 --dist loadgroup --no-loadscope-reorder`):
    a test module is one unit of work, so its module-scoped fixtures run once; all the
    cluster tests are one unit (they share the loopback clusters); the long units go
    first. Then skip `gpu` tests on machines without CUDA, saying why."""
    items.sort(key=_rank)  # stable: collection order within a unit
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_unit_of(item)))
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
