"""Fault injection for recovery tests of the training loop.

`FaultSpec` fires once (guarded by a marker file, so it survives restarts) when a given
rank reaches a given optimizer step: it raises, kills the worker process, or hangs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("pipeline.train")

FAULT_ENV = "PIPELINE_TRAIN_FAULT"


class InjectedFault(RuntimeError):
    """Raised by the fault-injection hook (tests of recovery only)."""


@dataclass(frozen=True)
class FaultSpec:
    """Fault injection for recovery tests: once, when rank `rank` is about to train after
    `at_step` optimizer steps, create `marker` and then raise (`raise`), kill the worker
    process (`exit`) or stop making progress (`hang`). The marker makes it fire only once
    per marker file, across restarts. Set from the driver's environment as
    `PIPELINE_TRAIN_FAULT=MODE:STEP:RANK:MARKER_PATH`."""

    mode: str
    at_step: int
    marker: str
    rank: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FaultSpec | None:
        text = (environ if environ is not None else os.environ).get(FAULT_ENV, "")
        if not text:
            return None
        try:
            mode, step, rank, marker = text.split(":", 3)
            spec = cls(mode, int(step), marker, int(rank))
        except ValueError:
            raise ValueError(f"{FAULT_ENV}={text!r}: expected MODE:STEP:RANK:MARKER_PATH"
                             ) from None
        if mode not in ("raise", "exit", "hang"):
            raise ValueError(f"{FAULT_ENV}: mode must be raise, exit or hang, got {mode!r}")
        return spec

    def maybe_fire(self, step: int, rank: int) -> None:
        if rank != self.rank or step != self.at_step or os.path.exists(self.marker):
            return
        with open(self.marker, "w", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
        log.warning("fault injection: %s at step %d on rank %d", self.mode, step, rank)
        if self.mode == "exit":
            logging.shutdown()
            os._exit(3)
        if self.mode == "hang":
            while True:
                time.sleep(1.0)
        raise InjectedFault(f"injected failure at step {step} on rank {rank} ({FAULT_ENV})")
