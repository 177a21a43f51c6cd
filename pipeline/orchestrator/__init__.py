"""Chains the stages of a run: plan, cache by manifest digests, lock, retries (runner.py)."""

from pipeline.orchestrator.lock import RunLockedError
from pipeline.orchestrator.plan import PlanEntry, plan
from pipeline.orchestrator.retry import RetryableError, RetryPolicy
from pipeline.orchestrator.runner import (
    RunInterrupted,
    StageFailed,
    StageOutcome,
    run_pipeline,
)
from pipeline.orchestrator.selection import SelectionError, select
from pipeline.orchestrator.stages import Stage, StageContext, StageResult, default_stages

__all__ = ["PlanEntry", "RetryPolicy", "RetryableError", "RunInterrupted", "RunLockedError",
           "SelectionError", "Stage", "StageContext", "StageFailed", "StageOutcome",
           "StageResult", "default_stages", "plan", "run_pipeline", "select"]
