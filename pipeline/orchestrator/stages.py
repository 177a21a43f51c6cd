"""The stage graph: each stage is a small unit with one `run` entry point.

A stage declares its upstream stages, the slice of the configuration that determines its
output (part of its cache key) and a `run` function that writes files under the staging
folder it is given and returns the figures to put in its manifest. The runner does the
rest: cache keys, publication, run.json state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import PipelineConfig, to_dict
from pipeline.storage import Manifest, RunPaths

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage's `run` gets: config, run layout, staging folder, upstream manifests."""

    cfg: PipelineConfig
    run: RunPaths
    staging_url: str
    inputs: Mapping[str, Manifest]
    _spark: Callable[[], SparkSession]

    @property
    def spark(self) -> SparkSession:
        """The SparkSession, created on first use (stages without Spark never start one)."""
        return self._spark()


@dataclass(frozen=True)
class StageResult:
    """Figures a stage reports: they go into its manifest and the run summary."""

    row_counts: Mapping[str, int] = field(default_factory=dict)
    schemas: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], StageResult]
    config_of: Callable[[PipelineConfig], Any]
    inputs: tuple[str, ...] = ()
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    description: str = ""
    # Which engine the stage needs, so the orchestrator can pick its backend:
    # "spark" (ingest, dedup: local or spark-submit), "ray" (train, evaluate: local or a
    # Ray job) or "local" (plain Python in this process).
    kind: Literal["local", "spark", "ray"] = "local"


def _run_synth(ctx: StageContext) -> StageResult:
    from pipeline.storage import filesystem
    from pipeline.synth import generate

    fs, path = filesystem(ctx.staging_url)
    modalities = _synth_modalities(ctx.cfg)
    scale, seed = ctx.cfg.synth.scale, ctx.cfg.synth.seed
    if ctx.staging_url.startswith("file://"):
        gt = generate(path, scale=scale, seed=seed, modalities=modalities)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            gt = generate(tmp, scale=scale, seed=seed, modalities=modalities)
            fs.put(tmp + "/", path, recursive=True)
    counts = {f"{m}.records": gt.n_records[m] for m in modalities}
    counts.update({f"{m}.bad": gt.n_bad[m] for m in modalities})
    summary = ", ".join(f"{gt.n_records[m]:,} {m} records" for m in modalities)
    return StageResult(row_counts=counts, summary=summary)


def _synth_modalities(cfg: PipelineConfig) -> tuple[str, ...]:
    return cfg.inputs.without_paths(cfg.modalities)


def synth_stage() -> Stage:
    return Stage(
        name="synth",
        run=_run_synth,
        config_of=lambda cfg: {**to_dict(cfg.synth), "modalities": _synth_modalities(cfg)},
        enabled=lambda cfg: bool(_synth_modalities(cfg)),
        description="generate sample raw data (only when no inputs are configured)",
    )


def default_stages() -> list[Stage]:
    """The pipeline's stages in execution order."""
    from pipeline.dedup.stage import dedup_report_stage, dedup_stage
    from pipeline.evaluate.stage import evaluate_stage
    from pipeline.ingest.stage import MODALITIES, ingest_stage
    from pipeline.report import summary_report_stage
    from pipeline.train.stage import train_stage

    return [synth_stage(), *(ingest_stage(m) for m in MODALITIES),
            *(dedup_stage(m) for m in MODALITIES), dedup_report_stage(MODALITIES),
            *(train_stage(m) for m in MODALITIES), *(evaluate_stage(m) for m in MODALITIES),
            summary_report_stage(MODALITIES)]
