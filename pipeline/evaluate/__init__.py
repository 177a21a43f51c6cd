"""Evaluation of trained models, and batch inference.

- `evaluate_stage(modality)` (pipeline.evaluate.stage): the `evaluate/<modality>` stage:
  best checkpoint of `train/<modality>` scored on the test split, metrics, HTML report,
  gates, all from the modality's spec (pipeline.modalities);
- `predict_table(cfg, modality, source, output)` (pipeline.evaluate.predict): score any
  Parquet table through the same Ray Data actor pool, with lineage in its manifest;
- `load_trained` (pipeline.evaluate.model): a verified checkpoint as a ready model;
- pipeline.evaluate.metrics: the metrics in plain numpy;
- `add_commands(subparsers)` (pipeline.evaluate.cli): the `evaluate` and `predict` commands.

Imports are lazy so that `import pipeline.evaluate` does not pull in Ray or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.evaluate.model import TrainedModel, load_trained
    from pipeline.evaluate.predict import PredictResult, predict_table
    from pipeline.evaluate.stage import evaluate_stage

_WHERE = {"evaluate_stage": "stage", "predict_table": "predict", "PredictResult": "predict",
          "load_trained": "model", "TrainedModel": "model"}
__all__ = ["PredictResult", "TrainedModel", "evaluate_stage", "load_trained",
           "predict_table"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"pipeline.evaluate.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'pipeline.evaluate' has no attribute {name!r}")
