"""`pipeline status RUN`: what a run did, from run.json and the manifests only.

Nothing here starts Spark or Ray (or imports torch): a status check must be instant and
safe to run while the run itself is going on.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.orchestrator.lock import LockInfo, abandoned_because, lock_of, read_lock
from pipeline.orchestrator.plan import INTERRUPTED_STATES, published
from pipeline.orchestrator.reports import report_urls
from pipeline.storage import Location, RunPaths


class RunNotFoundError(FileNotFoundError):
    """The run id has no run.json under the storage root."""


@dataclass(frozen=True)
class StageStatus:
    """One stage of a run: its recorded state plus the key figures of its manifest."""

    name: str
    state: str
    seconds: float | None = None
    attempts: int | None = None
    rows: Mapping[str, int] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    summary: str = ""
    error: str = ""
    published: bool = False
    manifest_digest: str = ""


@dataclass(frozen=True)
class RunStatus:
    """A whole run: stages in graph order, report URLs, the lock holder if any."""

    run_id: str
    run_url: str
    code_version: str
    stages: tuple[StageStatus, ...]
    reports: tuple[str, ...]
    lock: LockInfo | None = None
    lock_stale_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["stages"] = [asdict(s) for s in self.stages]
        return body


def _metrics_of(name: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate stages' `metrics`; for training, its final metrics and best val loss."""
    if isinstance(extra.get("metrics"), Mapping):
        return dict(extra["metrics"])
    if name.startswith("train/"):
        final = dict(extra.get("final_metrics") or {})
        figures: dict[str, Any] = {}
        if extra.get("best_val_loss") is not None:
            figures["best_val_loss"] = extra["best_val_loss"]
        # Losses and quality figures first; wall-clock and bookkeeping ones say little here.
        skip = ("epoch", "step", "lr")
        for key in sorted(final, key=lambda k: (0 if "loss" in k else 1, k)):
            if key not in skip and not key.endswith(("_seconds", "_per_s")):
                figures[key] = final[key]
        return figures
    return {}


def _effective_state(recorded: str, lock: LockInfo | None, stale: str | None) -> str:
    # run.json says "running" after a crash too: only a live lock holder makes it true.
    if recorded in INTERRUPTED_STATES and (lock is None or stale is not None):
        return "interrupted"
    return recorded


def run_status(root: Location, run_id: str, stale_s: float = 120.0) -> RunStatus:
    """Collect the status of run `run_id` under `root`; `RunNotFoundError` if there is none.

    Each stage's reports are the report files its manifest lists (orchestrator.reports)."""
    run = RunPaths(root, run_id)
    try:
        state = run.run_json.read_json()
    except FileNotFoundError:
        raise RunNotFoundError(f"no run {run_id!r} under {root}: {run.run_json} does not "
                               "exist (start it with `pipeline run --run-id "
                               f"{run_id}`)") from None
    recorded: Mapping[str, Any] = state.get("stages") or {}
    order = [n for n in state.get("stage_order") or [] if n in recorded]
    order += sorted(n for n in recorded if n not in order)
    lock = read_lock(lock_of(run.run))
    stale = abandoned_because(lock, time.time(), stale_s) if lock is not None else None
    stages: list[StageStatus] = []
    reports: list[str] = []
    for name in order:
        rec = recorded[name]
        manifest, _ = published(run.stage(name))
        extra: Mapping[str, Any] = manifest.extra if manifest is not None else {}
        reports += report_urls(run.stage(name), manifest)
        rows = dict(manifest.row_counts) if manifest is not None else dict(rec.get("rows") or {})
        stages.append(StageStatus(
            name=name, state=_effective_state(str(rec.get("state", "?")), lock, stale),
            seconds=rec.get("seconds"), attempts=rec.get("attempts"), rows=rows,
            metrics=_metrics_of(name, extra), summary=str(rec.get("summary", "")),
            error=str(rec.get("error", "")), published=manifest is not None,
            manifest_digest=manifest.digest if manifest is not None else ""))
    return RunStatus(run_id=run_id, run_url=run.run_url,
                     code_version=str(state.get("code_version", "")), stages=tuple(stages),
                     reports=tuple(dict.fromkeys(reports)), lock=lock, lock_stale_reason=stale)
