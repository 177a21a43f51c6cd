"""Registry of training tasks, one per modality: `get_task("text", cfg)`.

Each entry maps a task name to a factory `(cfg: PipelineConfig, labels) -> Task`; the
task classes expose one as `from_config`. Adding a task is one line in `_FACTORIES`.
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

_FACTORIES: dict[str, TaskFactory] = {
    "text": TextLMTask.from_config,
    "images": ImageClassifierTask.from_config,
    "transactions": FraudTask.from_config,
    # --- add further tasks here, one line each
}


def task_names() -> tuple[str, ...]:
    """The registered task names."""
    return tuple(_FACTORIES)


def get_task(name: str, cfg: PipelineConfig, labels: Sequence[str] | None = None) -> Task:
    """The task `name` built from `cfg`.

    `labels` is the sorted class-name vocabulary for classification tasks that need one
    (images: required); tasks that do not use it ignore it."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; registered: {', '.join(_FACTORIES)}"
                         ) from None
    return factory(cfg, labels)


__all__ = ["FraudTask", "ImageClassifierTask", "Task", "TaskFactory", "TextLMTask",
           "get_task", "task_names"]
