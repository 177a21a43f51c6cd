"""Ray Train training: the generic loop, the Parquet -> tensor data path, checkpoints.

Entry point: `train_task(cfg, task_name, data_stage_url, run) -> TrainResult`
(pipeline.train.trainer). Tasks live in pipeline.train.tasks (`get_task`).
Imports are lazy so that `import pipeline.train` does not pull in Ray or torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.train.trainer import TrainResult, train_task

__all__ = ["TrainResult", "train_task"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pipeline.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
