"""Ray Train training: the generic loop, the Parquet -> tensor data path, checkpoints.

Entry point: `train_task(cfg, modality, data, run) -> TrainResult` (pipeline.train.trainer;
`data` is the modality's published split stage, a `Location`). A modality's training task
comes from its spec (`pipeline.modalities`, `spec.training.make_task`); the Task classes
live in pipeline.train.tasks.

Imports are lazy so that `import pipeline.train` does not pull in Ray or torch: the
constants below can be imported anywhere (the run summary reads `UNVALIDATED_LOSS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.train.trainer import TrainResult, train_task

#: `val_loss` reported with checkpoints taken before validation (mid-epoch): a
#: placeholder, never a loss (history values at or above it are not figures)
UNVALIDATED_LOSS = 1e30

__all__ = ["UNVALIDATED_LOSS", "TrainResult", "train_task"]


def __getattr__(name: str) -> Any:
    if name in ("TrainResult", "train_task"):
        from pipeline.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
