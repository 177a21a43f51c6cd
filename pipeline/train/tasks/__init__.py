"""The training tasks, one per modality: `get_task("text", cfg)`.

Which task a modality trains is part of its spec (`pipeline.modalities`,
`spec.training.make_task`); `get_task` looks it up there, so a registered modality needs no
entry here. The task classes expose their factory as `from_config`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipeline.config import PipelineConfig
from pipeline.train.task import Task
from pipeline.train.tasks.images import ImageClassifierTask
from pipeline.train.tasks.text import TextLMTask
from pipeline.train.tasks.transactions import FraudTask

#: (config, label vocabulary or None) -> task
TaskFactory = Callable[[PipelineConfig, Sequence[str] | None], Task]


def task_names() -> tuple[str, ...]:
    """The registered modalities that train a model."""
    from pipeline import modalities

    return tuple(s.name for s in modalities.specs() if s.training is not None)


def get_task(modality: str, cfg: PipelineConfig, labels: Sequence[str] | None = None
             ) -> Task:
    """The training task of `modality` built from `cfg` (ValueError naming the registered
    modalities when it is unknown or trains nothing).

    `labels` is the sorted class-name vocabulary for classification tasks that need one
    (images: required); tasks that do not use it ignore it."""
    from pipeline.train.trainer import training_of

    return training_of(modality).make_task(cfg, labels)


__all__ = ["FraudTask", "ImageClassifierTask", "Task", "TaskFactory", "TextLMTask",
           "get_task", "task_names"]
