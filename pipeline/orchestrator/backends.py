"""Where a stage runs: in this process (local mode), or as a spark-submit / Ray job.

`execute(stage, ctx)` is the one entry point the runner calls. Local mode calls the
stage's `run` directly. A "spark" stage with `spark.backend: spark-submit` runs as
`spark-submit ... jobs/stage.py` (backend_spark.py); a "ray" stage with
`ray.backend: job` as a Ray job (backend_ray.py). Whatever backend runs it, the stage
writes the same files under `ctx.output` and returns the same StageResult (through JSON,
as the manifest stores it); the runner publishes it.

A job rebuilds its stage in its own process from the stage's factory reference
(`Stage.factory` and `Stage.args`, see job.py). A spark or ray stage without one cannot
run as a job: under a job backend that is an error naming the stage, never a silent
run in this process (which would ignore the configured cluster).
"""

from __future__ import annotations

import logging
from typing import Literal

from pipeline.config import PipelineConfig
from pipeline.orchestrator.retry import RetryableError
from pipeline.orchestrator.stages import Stage, StageContext, StageResult

log = logging.getLogger(__name__)

__all__ = ["NoFactoryError", "RetryableError", "backend_for", "backend_of", "execute"]

Backend = Literal["local", "spark-submit", "ray-job"]


class NoFactoryError(ValueError):
    """A spark/ray stage must run as a job, but has no factory reference to rebuild it."""


def backend_of(stage: Stage, ctx: StageContext) -> Backend:
    """The backend the configuration chooses for `stage`; `NoFactoryError` when that is a
    job and the stage has no factory reference a job could rebuild it from."""
    return backend_for(stage, ctx.cfg)


def backend_for(stage: Stage, cfg: PipelineConfig) -> Backend:
    """`backend_of` from the configuration alone (the runner checks every stage it is to
    run before the first one starts)."""
    if stage.kind == "spark" and cfg.spark.backend == "spark-submit":
        chosen: Backend = "spark-submit"
        setting = "spark.backend=spark-submit"
    elif stage.kind == "ray" and cfg.ray.backend == "job":
        chosen, setting = "ray-job", "ray.backend=job"
    else:
        return "local"
    if not stage.factory:
        raise NoFactoryError(
            f"stage {stage.name} ({stage.kind}) must run as a {chosen} job ({setting}), but "
            "it needs a factory reference to run as a job: it has no `factory` "
            "(\"module:function\") a job could rebuild it from. Build it with a "
            "module-level factory that sets Stage.factory/args, or use the local backend")
    return chosen


def execute(stage: Stage, ctx: StageContext) -> StageResult:
    """Run `stage` on the backend the configuration chooses for its kind."""
    backend = backend_of(stage, ctx)
    if backend == "spark-submit":
        from pipeline.orchestrator.backend_spark import run_spark_submit

        return run_spark_submit(stage, ctx)
    if backend == "ray-job":
        from pipeline.orchestrator.backend_ray import run_ray_job

        return run_ray_job(stage, ctx)
    return stage.run(ctx)
