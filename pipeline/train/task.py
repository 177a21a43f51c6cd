"""The task interface: what one modality plugs into the generic Ray Train loop.

A task supplies the model, the conversion of a Ray Data batch (a dict of numpy arrays, one
entry per Parquet column) into tensors, the loss, and how to turn accumulated metric sums
into reported figures. The loop owns everything else: DDP, devices, autocast, optimizer,
schedule, accumulation, clipping, checkpoints, logging.

Metrics are accumulated as *sums* (e.g. summed loss and counts) so that they can be
all-reduced across workers and divided once: averaging per-worker averages is wrong when
shards differ in size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


class Task(Protocol):
    """One training task (text LM, image classifier, fraud classifier)."""

    #: short name: "text", "images" or "transactions" (the modality it trains on)
    name: str
    #: Parquet columns the task reads from the split table
    columns: tuple[str, ...]

    def build_model(self) -> nn.Module:
        """A freshly initialized model (the loop seeds torch before calling this)."""
        ...

    def to_tensors(self, batch: Mapping[str, np.ndarray], train: bool,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Vectorized conversion of one batch of rows into CPU tensors.

        `train` enables augmentation; `generator` makes it reproducible per step."""
        ...

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean loss to back-propagate, and metric *sums* for this batch (detached)."""
        ...

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        """Turn metric sums (all-reduced over workers and batches) into reported metrics;
        must include "loss"."""
        ...


def as_float_dict(sums: Mapping[str, Any]) -> dict[str, float]:
    """Metric sums as plain floats (tensors moved to CPU)."""
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in sums.items()}
