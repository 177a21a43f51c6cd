"""Image task: a small CNN classifying the curated images by their `label` (folder name).

Batch conversion decodes the encoded bytes (pipeline.train.images), normalizes to [-1, 1]
and, when training, augments in batch (random resized crop, horizontal flip, brightness).
Labels map to class indices through a fixed vocabulary: a sorted list of class names,
index = position, given by whoever builds the task (the training driver reads the
distinct labels of the train split and stores them with the checkpoint).

Metrics (sums, all-reduced by the loop): `loss_sum` (summed cross-entropy, nats),
`correct`, `count`, and `confusion_{i}_{j}` = the number of images of true class i
predicted as class j, for every i, j < n_classes, so that a confusion matrix over all
workers is just the all-reduced sums (`confusion_matrix`). `summarize` reports `loss`
(mean cross-entropy) and `accuracy`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ImageInputConfig, ImageTaskConfig, PipelineConfig
from pipeline.train.images import augment, decode_images, normalize, to_float
from pipeline.train.models import SmallCNN


def confusion_key(true: int, pred: int) -> str:
    """Name of the metric sum counting images of class `true` predicted as `pred`."""
    return f"confusion_{true}_{pred}"


class ImageClassifierTask:
    """CNN classifier on the `bytes` and `label` columns (implements
    pipeline.train.task.Task).

    `labels`: the class names, sorted and distinct; class index = position.
    `max_pixels`: the decompression-bomb limit, the same as ingest's
    (inputs.images.max_pixels)."""

    name: str = "images"
    columns: tuple[str, ...] = ("bytes", "label")

    def __init__(self, cfg: ImageTaskConfig, labels: Sequence[str],
                 max_pixels: int = ImageInputConfig.max_pixels) -> None:
        labels = [str(x) for x in labels]
        if not labels:
            raise ValueError("the image task needs at least one class label")
        if labels != sorted(set(labels)):
            raise ValueError(f"labels must be sorted and distinct (index = position), "
                             f"got {labels}")
        self.cfg = cfg
        self.labels: tuple[str, ...] = tuple(labels)
        self.n_classes = len(labels)
        self.max_pixels = max_pixels
        self._vocab = np.asarray(labels, dtype=str)

    @classmethod
    def from_config(cls, cfg: PipelineConfig, labels: Sequence[str] | None = None
                    ) -> ImageClassifierTask:
        """Registry factory; `labels` (the sorted class names) is required."""
        if labels is None:
            raise ValueError("the images task needs its label vocabulary: pass labels= "
                             "(the sorted distinct `label` values of the train split)")
        return cls(cfg.train.images, labels, max_pixels=cfg.inputs.images.max_pixels)

    def build_model(self) -> nn.Module:
        return SmallCNN(self.n_classes, channels=self.cfg.channels)

    def label_indices(self, labels: Any, ids: Sequence[Any] | None = None) -> np.ndarray:
        """Class indices [B] int64 of a column of label names (vectorized lookup in the
        sorted vocabulary); raises ValueError naming the first unknown or null label."""
        names = np.asarray(labels, dtype=object).astype(str)
        idx = np.searchsorted(self._vocab, names)
        clipped = np.minimum(idx, self.n_classes - 1)
        bad = np.flatnonzero(self._vocab[clipped] != names)
        if bad.size:
            i = int(bad[0])
            row = f"row {i}" + (f" (image_id {ids[i]})" if ids is not None else "")
            raise ValueError(f"{row}: label {labels[i]!r} is not one of the task's "
                             f"{self.n_classes} classes {list(self.labels)}")
        return clipped.astype(np.int64)

    def to_tensors(self, batch: Mapping[str, Any], train: bool,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"images": [B, 3, S, S] float32 in [-1, 1], "labels": [B] int64}.

        An `image_id` column, when the batch has one, is only used to name a bad row."""
        ids = batch.get("image_id")
        pixels = decode_images(batch["bytes"], self.cfg.image_size, self.max_pixels, ids)
        x = to_float(pixels)
        if train:
            x = augment(x, generator)
        y = torch.from_numpy(self.label_indices(batch["label"], ids))
        return {"images": normalize(x), "labels": y}

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = batch["labels"]
        logits = model(batch["images"]).float()  # float32 softmax under autocast
        loss_sum = F.cross_entropy(logits, y, reduction="sum")
        count = y.numel()
        pred = logits.argmax(dim=1)
        k = self.n_classes
        confusion = torch.bincount(y * k + pred, minlength=k * k).float()
        sums = {
            "loss_sum": loss_sum.detach(),
            "correct": (pred == y).sum().float(),
            "count": torch.tensor(float(count), device=y.device),
        }
        sums.update({confusion_key(i, j): confusion[i * k + j]
                     for i in range(k) for j in range(k)})
        return loss_sum / max(count, 1), sums

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        count = sums.get("count", 0.0)
        if not count:
            return {"loss": math.nan, "accuracy": math.nan}
        return {"loss": sums["loss_sum"] / count, "accuracy": sums["correct"] / count}

    def confusion_matrix(self, sums: Mapping[str, float]) -> np.ndarray:
        """[n_classes, n_classes] int64 counts, rows = true class, columns = predicted."""
        k = self.n_classes
        return np.array([[int(sums.get(confusion_key(i, j), 0)) for j in range(k)]
                         for i in range(k)], dtype=np.int64)
