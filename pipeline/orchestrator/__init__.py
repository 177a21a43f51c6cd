"""Chains the stages of a run with caching by manifest digests (see runner.py)."""

from pipeline.orchestrator.runner import StageFailed, StageOutcome, run_pipeline
from pipeline.orchestrator.stages import Stage, StageContext, StageResult, default_stages

__all__ = ["Stage", "StageContext", "StageFailed", "StageOutcome", "StageResult",
           "default_stages", "run_pipeline"]
