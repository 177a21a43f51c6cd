"""The text LM and the image CNN learn through the real Ray Train path (local Ray)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.storage import Location, RunPaths
from pipeline.train.data import publish_split_table

pytestmark = pytest.mark.integration


def _cfg(root: Path, **train: Any) -> PipelineConfig:
    return config_from_dict({
        "ray": {"num_cpus": 2}, "storage": {"root": f"file://{root}"},
        "train": {"epochs": 3, "seed": 0, "warmup_steps": 3, "checkpoint_every_steps": 1000,
                  "log_every_steps": 20, **train}})


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    return list(rng.choice(["train", "train", "train", "train", "val"], size=n))


def _text_table() -> pa.Table:
    import pydoc_data.topics

    prose = " ".join(pydoc_data.topics.topics[k] for k in ("if", "while", "for", "try"))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", prose) if len(s) > 40][:60]
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(sentences, size=3)) for _ in range(240)]
    n = len(docs)
    return pa.table({"doc_id": [f"d{i:04d}" for i in range(n)], "text": docs,
                     "cluster_id": [f"d{i:04d}" for i in range(n)],
                     "split": _splits(n, rng)})


def _image_table() -> pa.Table:
    from pipeline.synth.images import CLASSES, draw_image, encode

    rng = np.random.default_rng(1)
    labels = [CLASSES[i % 2] for i in range(160)]  # circles vs squares
    blobs = [encode(draw_image(rng, label), "PNG") for label in labels]
    n = len(blobs)
    return pa.table({"image_id": [f"i{i:04d}" for i in range(n)], "bytes": blobs,
                     "label": labels, "cluster_id": [f"i{i:04d}" for i in range(n)],
                     "split": _splits(n, rng)})


def _train(tmp: Path, task: str, table: pa.Table, cfg: PipelineConfig) -> Any:
    from pipeline.train import train_task

    run = RunPaths(Location(f"file://{tmp}"), f"{task}-run")
    stage = run.stage(f"dedup/{task}")
    publish_split_table(stage, table)
    return train_task(cfg, task, stage, run)


def test_text_lm_learns_under_ray_train(ray_local: Any, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, text={"seq_len": 64, "d_model": 64, "n_layers": 1, "n_heads": 2,
                               "batch_size": 16, "lr": 3e-3})
    result = _train(tmp_path, "text", _text_table(), cfg)
    first, last = result.history[0], result.history[-1]
    assert len(result.history) == 3
    assert last["train_loss"] < first["train_loss"]
    assert last["val_loss"] < first["val_loss"]
    # Better than a uniform guess over 256 bytes (8 bits per byte).
    assert last["val_bits_per_byte"] < 8.0, result.history


def test_image_cnn_learns_under_ray_train(ray_local: Any, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, epochs=4, images={"image_size": 32, "channels": 16,
                                           "batch_size": 16, "lr": 2e-3})
    result = _train(tmp_path, "images", _image_table(), cfg)
    first, last = result.history[0], result.history[-1]
    assert last["train_loss"] < first["train_loss"], result.history
    assert result.task_state["labels"] == ["circle", "square"]
    assert max(h["val_accuracy"] for h in result.history) > 0.6, result.history
