"""Loading a trained model for evaluation and inference, with its lineage verified.

`load_trained` reads a checkpoint's record (`checkpoint.json`), refuses one trained on
other data than expected (the run's `dedup/<modality>` manifest content digest), loads the
weights through `checkpoint.load_model_state` (size and SHA-256 checked against the record,
`torch.load(weights_only=True)`), and rebuilds the modality's task from the task state
stored with the checkpoint (class vocabulary, pos_weight...), so the model is scored
exactly as trained.

`best_checkpoint` finds the checkpoint a `train/<modality>` stage chose: its manifest
`extra` names it, its `result.json` (read through the manifest and digest-checked by
`pipeline.train.stage.read_train_result`) carries the task state.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.config import PipelineConfig
from pipeline.storage import Location, read_manifest
from pipeline.train import checkpoint as ckpt
from pipeline.train.stage import read_train_result
from pipeline.train.task import Task

log = logging.getLogger(__name__)

__all__ = ["TrainedModel", "TrainedRef", "best_checkpoint", "build_task", "load_trained",
           "read_train_result"]


@dataclass(frozen=True)
class TrainedModel:
    """A verified model ready for scoring (eval mode, CPU)."""

    task: Task
    model: nn.Module
    checkpoint: Location
    checkpoint_digest: str  # SHA-256 of model.pt, from the verified checkpoint record
    meta: ckpt.CheckpointMeta
    task_state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def checkpoint_url(self) -> str:
        return self.checkpoint.url


@dataclass(frozen=True)
class TrainedRef:
    """What a published `train/<modality>` stage says about its model."""

    checkpoint: Location
    data_digest: str
    task_state: Mapping[str, Any]
    history: tuple[Mapping[str, float], ...]


def build_task(cfg: PipelineConfig, modality: str, task_state: Mapping[str, Any]) -> Task:
    """The task as it was trained: vocabulary and statistics from the checkpoint's state."""
    from pipeline.train.tasks import get_task

    labels = task_state.get("labels")
    task = get_task(modality, cfg, list(labels) if labels is not None else None)
    # A task may keep driver-side statistics as attributes (the fraud task's pos_weight and
    # dropout); restore what training measured (dropout shapes nothing in eval mode, but
    # the model is rebuilt as it was trained).
    for name in ("pos_weight", "dropout"):
        if name in task_state and hasattr(task, name):
            setattr(task, name, float(task_state[name]))
    restore = getattr(task, "restore", None)
    if callable(restore):  # statistics beyond those (the fraud task's standardization)
        restore(task_state)
    return task


def load_trained(cfg: PipelineConfig, modality: str, checkpoint: Location | str,
                 task_state: Mapping[str, Any] | None = None, *,
                 expected_data_digest: str | None = None) -> TrainedModel:
    """Load and verify the checkpoint folder `checkpoint` (a URL string is read with the
    options of `cfg.storage`) for `modality`.

    `task_state` defaults to the one recorded in the checkpoint. Raises
    `CheckpointMismatchError` when the checkpoint belongs to another modality or was
    trained on data whose manifest digest is not `expected_data_digest`, and
    `CorruptCheckpointError` when model.pt does not match its record."""
    where = cfg.storage.location.at(checkpoint) if isinstance(checkpoint, str) else checkpoint
    url = where.url
    fs, path = where.filesystem()
    meta = ckpt.read_meta(fs, path)
    if meta.task != modality:
        raise ckpt.CheckpointMismatchError(
            f"checkpoint {url} is a {meta.task!r} model, not {modality!r}")
    if expected_data_digest is not None and meta.data_digest != expected_data_digest:
        raise ckpt.CheckpointMismatchError(
            f"checkpoint {url} was trained on data with manifest digest "
            f"{meta.data_digest}, but this run's data has manifest digest "
            f"{expected_data_digest}: the model does not belong to this data; retrain it "
            f"or evaluate it against the data it was trained on")
    state = dict(task_state if task_state is not None else meta.task_state)
    task = build_task(cfg, modality, state)
    weights = ckpt.load_model_state(fs, path)  # size + sha256 checked, weights_only=True
    model = task.build_model()
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ckpt.CorruptCheckpointError(
            f"{url}/{ckpt.MODEL_FILE} does not fit the {modality} model built from the "
            f"current config (train.{modality} changed?): {str(exc).splitlines()[0]}"
        ) from exc
    model.eval()
    digest = str(meta.files.get(ckpt.MODEL_FILE, {}).get("sha256", ""))
    log.info("%s: loaded %s (step %d, %d parameters, model.pt sha256 %s)", modality, url,
             meta.step, sum(p.numel() for p in model.parameters()), digest[:12])
    return TrainedModel(task=task, model=model.to(torch.device("cpu")), checkpoint=where,
                        checkpoint_digest=digest, meta=meta, task_state=state)


def best_checkpoint(train_stage: Location) -> TrainedRef:
    """The checkpoint a published `train/<modality>` stage retained as best (lowest
    val_loss); its latest checkpoint when no epoch was validated (an empty val split)."""
    extra = read_manifest(train_stage).extra
    result = read_train_result(train_stage)
    url = extra.get("best_checkpoint") or result.get("best_checkpoint")
    if not url:
        url = result.get("latest_checkpoint")
        log.warning("%s names no best checkpoint (no validated epoch); using the latest, %s",
                    train_stage, url)
    if not url:
        raise ckpt.CheckpointError(f"{train_stage} names no checkpoint to evaluate")
    return TrainedRef(checkpoint=train_stage.at(str(url)),
                      data_digest=str(extra.get("data_digest") or result.get("data_digest")),
                      task_state=dict(result.get("task_state") or {}),
                      history=tuple(dict(h) for h in result.get("history") or ()))
