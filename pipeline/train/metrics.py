"""Metric sums across batches and ranks (all-reduced exactly, then summarized once)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SumAccumulator:
    """Metric sums kept on the device in float64; one stacked add per batch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.keys: list[str] = []
        self.values: torch.Tensor | None = None

    def add(self, sums: Mapping[str, torch.Tensor | float]) -> None:
        if self.values is None:
            self.keys = sorted(sums)
            self.values = torch.zeros(len(self.keys), dtype=torch.float64, device=self.device)
        elif len(sums) != len(self.keys):
            self.load({**self.local(), **{k: 0.0 for k in sums if k not in self.keys}})
        # One stack (it promotes dtypes) and one add, however many sums a task returns.
        parts = [v if isinstance(v := sums.get(k, 0.0), torch.Tensor)
                 else torch.tensor(float(v), device=self.device) for k in self.keys]
        self.values += torch.stack(parts).detach().reshape(-1).to(torch.float64)

    def load(self, sums: Mapping[str, float]) -> None:
        self.keys = sorted(sums)
        self.values = torch.tensor([float(sums[k]) for k in self.keys], dtype=torch.float64,
                                   device=self.device)

    def local(self) -> dict[str, float]:
        if self.values is None:
            return {}
        return dict(zip(self.keys, self.values.tolist(), strict=True))

    def reduced(self) -> dict[str, float]:
        """Sums over all ranks (a collective: every rank must call it)."""
        if not distributed():
            return self.local()
        key_lists: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(key_lists, self.keys)
        keys = sorted(set().union(*key_lists))
        mine = self.local()
        values = torch.tensor([mine.get(k, 0.0) for k in keys], dtype=torch.float64,
                              device=self.device)
        dist.all_reduce(values)
        return dict(zip(keys, values.tolist(), strict=True))


def gather_objects(obj: Any) -> list[Any]:
    """`obj` from every rank, by rank (a collective)."""
    if not distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
