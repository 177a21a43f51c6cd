"""Stage types: each stage is a small unit with one `run` entry point.

A stage declares its upstream stages, the slice of the configuration that determines its
output (part of its cache key) and a `run` function that writes files into the output
folder it is given and returns the figures to put in its manifest. The runner does the
rest: cache keys, publication, run.json state. The orchestrator knows no concrete stage:
the default graph is built in pipeline.graph.

A stage made by a module-level factory carries a reference to it (`factory`, `args`), so
that a spark-submit or Ray job can rebuild exactly that stage in its own process.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pipeline.config import PipelineConfig, to_dict
from pipeline.storage import Location, Manifest, RunPaths

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


@dataclass
class StageContext:
    """What a stage's `run` gets: config, run layout, its output folder, upstream manifests.

    `output` is the stage's private staging folder: everything written there is published
    with the manifest when `run` returns, and dropped when it raises."""

    cfg: PipelineConfig
    run: RunPaths
    output: Location
    inputs: Mapping[str, Manifest]
    _spark: Callable[[], SparkSession]

    @property
    def spark(self) -> SparkSession:
        """The SparkSession, created on first use (stages without Spark never start one)."""
        return self._spark()

    def input(self, name: str) -> Location:
        """The published folder of upstream stage `name`."""
        return self.run.stage(name)


@dataclass(frozen=True)
class StageResult:
    """Figures a stage reports: they go into its manifest and the run summary."""

    row_counts: Mapping[str, int] = field(default_factory=dict)
    schemas: Mapping[str, str] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""


class LazySpark:
    """The SparkSession, created on first use (a stage that needs no Spark never starts
    one). `stop()` stops it only if this object created it (`owned`): a session that
    already existed belongs to the caller (a notebook, a test fixture, spark-submit's
    driver that started it before us). The runner and a job's side use this one class."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.session: SparkSession | None = None
        self.owned = False

    def __call__(self) -> SparkSession:
        if self.session is None:
            from pyspark.sql import SparkSession

            from pipeline.spark import get_spark

            self.owned = SparkSession.getActiveSession() is None
            self.session = get_spark(self.cfg.spark)
        return self.session

    def stop(self) -> None:
        """Stop the session if this object created it, with its Py4J gateway and JVM
        (`pipeline.spark.stop_spark`); forget it either way."""
        if self.session is not None and self.owned:
            from pipeline.spark import stop_spark

            stop_spark(self.session)
        self.session = None
        self.owned = False


class UnknownStageError(ValueError):
    """A stage reference that names no stage (a job cannot rebuild it)."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], StageResult]
    config_of: Callable[[PipelineConfig], Any]
    inputs: tuple[str, ...] = ()
    enabled: Callable[[PipelineConfig], bool] = lambda cfg: True
    #: why `enabled` is False, shown by the plan
    disabled_reason: Callable[[PipelineConfig], str] = lambda cfg: "disabled by config"
    description: str = ""
    # Which engine the stage needs, so the orchestrator can pick its backend:
    # "spark" (ingest, dedup: local or spark-submit), "ray" (train, evaluate: local or a
    # Ray job) or "local" (plain Python in this process).
    kind: Literal["local", "spark", "ray"] = "local"
    # "module:function" that built this stage and its arguments: what a job calls to
    # rebuild it in another process. Empty for stages made ad hoc (they run locally only).
    factory: str = ""
    args: tuple[str, ...] = ()


def stage_from_factory(factory: str, args: tuple[str, ...] | list[str], name: str) -> Stage:
    """Rebuild a stage from its factory reference; `UnknownStageError` when the reference
    does not resolve or builds a stage of another name."""
    module, _, func = factory.partition(":")
    try:
        made = getattr(importlib.import_module(module), func)(*args)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise UnknownStageError(f"stage {name!r}: factory {factory}{tuple(args)} cannot be "
                                f"called here: {exc}") from None
    if not isinstance(made, Stage) or made.name != name:
        got = made.name if isinstance(made, Stage) else type(made).__name__
        raise UnknownStageError(f"factory {factory}{tuple(args)} built {got!r}, not the "
                                f"stage {name!r}")
    return made


def _run_synth(ctx: StageContext) -> StageResult:
    from pipeline.synth import generate

    modalities = synth_modalities(ctx.cfg)
    scale, seed = ctx.cfg.synth.scale, ctx.cfg.synth.seed
    fs, path = ctx.output.filesystem()
    if ctx.output.is_local:
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


def synth_modalities(cfg: PipelineConfig) -> tuple[str, ...]:
    """The run's modalities that have no configured paths and can generate sample data."""
    from pipeline import modalities

    return tuple(m for m in cfg.modalities
                 if (spec := modalities.find(m)) is not None and spec.synth is not None
                 and not spec.input_config(cfg).paths)


def synth_stage() -> Stage:
    return Stage(
        name="synth",
        run=_run_synth,
        config_of=lambda cfg: {**to_dict(cfg.synth), "modalities": synth_modalities(cfg)},
        enabled=lambda cfg: bool(synth_modalities(cfg)),
        description="generate sample raw data (only when no inputs are configured)",
        factory="pipeline.orchestrator.stages:synth_stage",
    )
