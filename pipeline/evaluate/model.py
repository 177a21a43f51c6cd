"""Loading a trained model for evaluation and inference, with its lineage verified.

`load_trained` reads a checkpoint's record (`checkpoint.json`), refuses one trained on
other data than expected (the run's `dedup/<task>` manifest content digest), loads the
weights through `checkpoint.load_model_state` (size and SHA-256 checked against the record,
`torch.load(weights_only=True)`), and rebuilds the task from the task state stored with the
checkpoint (class vocabulary, pos_weight...), so the model is scored exactly as trained.

`best_checkpoint` finds the checkpoint a `train/<task>` stage chose: its manifest `extra`
names it, its `result.json` (read through the manifest and digest-checked) carries the
task state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.config import PipelineConfig
from pipeline.storage import filesystem, join, read_manifest, sha256_bytes
from pipeline.train import checkpoint as ckpt
from pipeline.train.task import Task

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class TrainedModel:
    """A verified model ready for scoring (eval mode, CPU)."""

    task: Task
    model: nn.Module
    checkpoint_url: str
    checkpoint_digest: str  # SHA-256 of model.pt, from the verified checkpoint record
    meta: ckpt.CheckpointMeta
    task_state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainedRef:
    """What a published `train/<task>` stage says about its model."""

    checkpoint_url: str
    data_digest: str
    task_state: Mapping[str, Any]
    history: tuple[Mapping[str, float], ...]


def build_task(cfg: PipelineConfig, task_name: str, task_state: Mapping[str, Any]) -> Task:
    """The task as it was trained: vocabulary and statistics from the checkpoint's state."""
    from pipeline.train.tasks import get_task

    labels = task_state.get("labels")
    task = get_task(task_name, cfg, list(labels) if labels is not None else None)
    # FraudTask keeps pos_weight and dropout as attributes; restore what training measured
    # (dropout shapes nothing in eval mode, but the model is rebuilt as it was trained).
    for name in ("pos_weight", "dropout"):
        if name in task_state and hasattr(task, name):
            setattr(task, name, float(task_state[name]))
    return task


def load_trained(cfg: PipelineConfig, task_name: str, checkpoint_url: str,
                 task_state: Mapping[str, Any] | None = None, *,
                 expected_data_digest: str | None = None,
                 options: Mapping[str, Any] | None = None) -> TrainedModel:
    """Load and verify the checkpoint at `checkpoint_url` for `task_name`.

    `task_state` defaults to the one recorded in the checkpoint. Raises
    `CheckpointMismatchError` when the checkpoint belongs to another task or was trained on
    data whose manifest digest is not `expected_data_digest`, and `CorruptCheckpointError`
    when model.pt does not match its record."""
    opts = dict(cfg.storage.options if options is None else options)
    fs, path = filesystem(checkpoint_url, opts)
    meta = ckpt.read_meta(fs, path)
    if meta.task != task_name:
        raise ckpt.CheckpointMismatchError(
            f"checkpoint {checkpoint_url} is a {meta.task!r} model, not {task_name!r}")
    if expected_data_digest is not None and meta.data_digest != expected_data_digest:
        raise ckpt.CheckpointMismatchError(
            f"checkpoint {checkpoint_url} was trained on data with manifest digest "
            f"{meta.data_digest}, but this run's data has manifest digest "
            f"{expected_data_digest}: the model does not belong to this data; retrain it "
            f"or evaluate it against the data it was trained on")
    state = dict(task_state if task_state is not None else meta.task_state)
    task = build_task(cfg, task_name, state)
    weights = ckpt.load_model_state(fs, path)  # size + sha256 checked, weights_only=True
    model = task.build_model()
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ckpt.CorruptCheckpointError(
            f"{checkpoint_url}/{ckpt.MODEL_FILE} does not fit the {task_name} model built "
            f"from the current config (train.{task_name} changed?): "
            f"{str(exc).splitlines()[0]}") from exc
    model.eval()
    digest = str(meta.files.get(ckpt.MODEL_FILE, {}).get("sha256", ""))
    log.info("%s: loaded %s (step %d, %d parameters, model.pt sha256 %s)", task_name,
             checkpoint_url, meta.step, sum(p.numel() for p in model.parameters()),
             digest[:12])
    return TrainedModel(task=task, model=model.to(torch.device("cpu")),
                        checkpoint_url=checkpoint_url, checkpoint_digest=digest, meta=meta,
                        task_state=state)


def read_train_result(train_stage_url: str, options: Mapping[str, Any] | None = None
                      ) -> dict[str, Any]:
    """The `result.json` a `train/<task>` stage published, checked against its manifest."""
    manifest = read_manifest(train_stage_url, options)
    entry = manifest.file(RESULT_FILE)
    fs, path = filesystem(join(train_stage_url, RESULT_FILE), options)
    with fs.open(path, "rb") as fh:
        data = fh.read()
    if sha256_bytes(data) != entry.sha256:
        raise ValueError(f"{train_stage_url}/{RESULT_FILE} does not match its manifest "
                         f"(sha256 {sha256_bytes(data)[:12]} != {entry.sha256[:12]})")
    body: dict[str, Any] = json.loads(data.decode())
    return body


def best_checkpoint(train_stage_url: str, options: Mapping[str, Any] | None = None
                    ) -> TrainedRef:
    """The checkpoint a published `train/<task>` stage retained as best (lowest val_loss);
    its latest checkpoint when no epoch was validated (an empty val split)."""
    extra = read_manifest(train_stage_url, options).extra
    result = read_train_result(train_stage_url, options)
    url = extra.get("best_checkpoint") or result.get("best_checkpoint")
    if not url:
        url = result.get("latest_checkpoint")
        log.warning("%s names no best checkpoint (no validated epoch); using the latest, %s",
                    train_stage_url, url)
    if not url:
        raise ckpt.CheckpointError(f"{train_stage_url} names no checkpoint to evaluate")
    return TrainedRef(checkpoint_url=str(url),
                      data_digest=str(extra.get("data_digest") or result.get("data_digest")),
                      task_state=dict(result.get("task_state") or {}),
                      history=tuple(dict(h) for h in result.get("history") or ()))
