"""Chains the stages of a run: plan, cache by manifest digests, lock, retries (runner.py).

The orchestrator runs the stages it is given; which stages make up `pipeline run` is
decided outside it (pipeline.graph), and jobs rebuild a stage from its factory reference.
"""

from pipeline.orchestrator.backends import NoFactoryError
from pipeline.orchestrator.lock import LockLostError, RunLockedError
from pipeline.orchestrator.plan import PlanEntry, plan
from pipeline.orchestrator.retry import RetryableError, RetryPolicy
from pipeline.orchestrator.runner import (
    RunInterrupted,
    StageFailed,
    StageOutcome,
    run_pipeline,
)
from pipeline.orchestrator.selection import SelectionError, select
from pipeline.orchestrator.stages import Stage, StageContext, StageResult

__all__ = ["LockLostError", "NoFactoryError", "PlanEntry", "RetryPolicy", "RetryableError",
           "RunInterrupted", "RunLockedError", "SelectionError", "Stage", "StageContext",
           "StageFailed", "StageOutcome", "StageResult", "plan", "run_pipeline", "select"]
