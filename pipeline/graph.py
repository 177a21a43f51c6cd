"""The default stage graph: synth, then per registered modality ingest and dedup, the dedup
report, per trainable modality train and evaluate, and the run summary.

The orchestrator runs whatever list of stages it is given; this module is the one place
that knows which concrete stages make up `pipeline run` (and `pipeline ingest`). The
graph covers every registered modality (pipeline.modalities); a modality outside
`cfg.modalities` has its stages disabled, so adding one to the config needs no code
change. Every stage here is built by a module-level factory and carries its reference,
so a spark-submit or Ray job can rebuild it.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.orchestrator.stages import Stage, synth_stage


def default_stages() -> list[Stage]:
    """The pipeline's stages in execution order."""
    from pipeline import modalities
    from pipeline.dedup.stage import dedup_report_stage, dedup_stage
    from pipeline.evaluate.stage import evaluate_stage
    from pipeline.ingest.stage import ingest_stage
    from pipeline.report import summary_report_stage
    from pipeline.train.stage import train_stage

    names = modalities.names()
    trained = [s.name for s in modalities.specs() if s.training is not None]
    evaluated = [s.name for s in modalities.specs() if s.evaluation is not None]
    return [synth_stage(), *(ingest_stage(m) for m in names),
            *(dedup_stage(m) for m in names), dedup_report_stage(),
            *(train_stage(m) for m in trained), *(evaluate_stage(m) for m in evaluated),
            summary_report_stage()]


def ingest_stages(modalities: Iterable[str]) -> list[Stage]:
    """`pipeline ingest`: the synth stage, then the ingest stage of each modality given."""
    from pipeline.ingest.stage import ingest_stage

    return [synth_stage(), *(ingest_stage(m) for m in modalities)]
