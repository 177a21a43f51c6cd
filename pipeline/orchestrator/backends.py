"""Where a stage runs: in this process (local mode), or as a spark-submit / Ray job.

`execute(stage, ctx)` is the one entry point the runner calls. Local mode calls the
stage's `run` directly. A "spark" stage with `spark.backend: spark-submit` runs as
`spark-submit ... jobs/stage.py` (backend_spark.py); a "ray" stage with
`ray.backend: job` as a Ray job (backend_ray.py). Whatever backend runs it, the stage
writes the same files under `ctx.staging_url` and returns the same StageResult (through
JSON, as the manifest stores it); the runner publishes it.

A job can only run a stage of the default stage graph (it looks the stage up by name);
any other stage runs in this process whatever the configuration says.
"""

from __future__ import annotations

import logging
from typing import Literal

from pipeline.orchestrator.retry import RetryableError
from pipeline.orchestrator.stages import Stage, StageContext, StageResult, default_stages

log = logging.getLogger(__name__)

__all__ = ["RetryableError", "backend_of", "execute"]

Backend = Literal["local", "spark-submit", "ray-job"]


def backend_of(stage: Stage, ctx: StageContext) -> Backend:
    """The backend the configuration chooses for `stage`."""
    cfg = ctx.cfg
    if stage.kind == "spark" and cfg.spark.backend == "spark-submit":
        chosen: Backend = "spark-submit"
    elif stage.kind == "ray" and cfg.ray.backend == "job":
        chosen = "ray-job"
    else:
        return "local"
    if stage.name not in {s.name for s in default_stages()}:
        log.warning("stage %s is not in the default stage graph, so a %s job cannot look it "
                    "up: running it in this process", stage.name, chosen)
        return "local"
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
