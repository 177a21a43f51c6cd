"""Where a stage runs: in this process (local mode), or as a spark-submit / Ray job.

`execute(stage, ctx)` is the one entry point the runner calls. Local mode calls the
stage's `run` directly. Whatever backend runs it, the stage writes the same files under
`ctx.staging_url` and returns the same StageResult; the runner publishes it.
"""

from __future__ import annotations

from pipeline.orchestrator.stages import Stage, StageContext, StageResult


def execute(stage: Stage, ctx: StageContext) -> StageResult:
    """Run `stage` on the backend the configuration chooses for its kind."""
    return stage.run(ctx)
