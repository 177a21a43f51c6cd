"""Shared fixtures: one local Spark session, one local Ray and one whole-graph run on
sample data per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
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
def ray_local(spark: Any) -> Iterator[Any]:
    """An in-process Ray with 2 CPUs, shut down at the end of the session.

    Started after the session's Spark: with Ray first, launching Spark's JVM from this
    process later broke Ray's connection to its GCS ("Error while unregistering the
    subscriber: Missing :authority header", then no GCS reply: the next
    `ray.cluster_resources()` or Ray Data execution in this process hung), seen when a
    Ray-only test module ran before the first Spark one."""
    import ray

    from pipeline.config import RayConfig
    from pipeline.ray_env import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


#: The sample run's settings: small enough for CI, big enough that every stage has real
#: work (planted duplicates of every kind, every split with rows, fraud in the test split).
SAMPLE_SETTINGS: dict[str, Any] = {
    "run_id": "sample",
    "synth": {"scale": 0.3, "seed": 5},
    "spark": {"shuffle_partitions": 2},
    "ray": {"num_cpus": 2},
    # Ray Train's local mode (the loop in this process): the stages around training are
    # what these tests check; Ray Train's workers have their own tests (tests/train/).
    "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 1000,
              "log_every_steps": 100, "scaling": {"num_workers": 0},
              "text": {"seq_len": 64, "d_model": 32, "n_layers": 1, "n_heads": 2,
                       "batch_size": 16},
              "images": {"image_size": 16, "channels": 8, "batch_size": 16},
              "transactions": {"hidden": 16, "batch_size": 64}},
    "evaluate": {"batch_size": 64, "num_samples": 2, "max_new_tokens": 8},
}


@dataclass(frozen=True)
class SampleRun:
    """The default graph run once on sample data, in local mode; the ingest, dedup,
    evaluate and end-to-end tests read it. A test that changes it must leave it as
    published (re-running a stage to the same bytes is fine)."""

    root: Path
    settings: dict[str, Any]
    outcomes: list[Any]  # the first run's StageOutcomes

    @property
    def run_id(self) -> str:
        return str(self.settings["run_id"])

    @property
    def run_dir(self) -> Path:
        return self.root / "runs" / self.run_id

    @property
    def paths(self) -> Any:
        from pipeline.storage import Location, RunPaths

        return RunPaths(Location(f"file://{self.root}"), self.run_id)

    def config_dict(self, root: Path | None = None) -> dict[str, Any]:
        """The settings as a config file holds them, storage root included."""
        return {**self.settings, "storage": {"root": f"file://{root or self.root}"}}

    def cfg(self, *overrides: str, root: Path | None = None) -> Any:
        """The run's PipelineConfig, with `key=value` overrides."""
        from pipeline.config import config_from_dict

        return config_from_dict(self.config_dict(root), list(overrides))

    def table(self, stage: str, prefix: str = "data/") -> Any:
        """The rows stage `stage` (e.g. "dedup/text") published under `prefix`, as one
        pyarrow Table in manifest order (what the next stage reads)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from pipeline.storage import published_files

        parts = []
        for loc in published_files(self.paths.stage(stage), prefix=prefix, suffix=".parquet"):
            with loc.open() as fh:
                parts.append(pq.read_table(fh))
        return pa.concat_tables(parts)


@pytest.fixture(scope="session")
def sample_run(spark: Any, ray_local: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> SampleRun:
    """Every stage of the default graph on sample data (synth at scale 0.3), once."""
    from pipeline.graph import default_stages
    from pipeline.orchestrator import run_pipeline

    root = tmp_path_factory.mktemp("sample-run")
    run = SampleRun(root, SAMPLE_SETTINGS, [])
    run.outcomes.extend(run_pipeline(run.cfg(), default_stages()))
    return run


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
