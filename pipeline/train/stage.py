"""The `train/<task>` stages: Ray Train on the `dedup/<task>` split tables.

The stage output is small (`result.json`: best checkpoint, metrics, per-epoch history);
the checkpoints themselves live in `<run>/checkpoints/train_<task>/`, where Ray Train
writes them while training runs. An interrupted stage re-runs through `train_task`, which
resumes from the last complete checkpoint, so no finished step is trained twice.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from pipeline.config import PipelineConfig, to_dict
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import filesystem, join

log = logging.getLogger(__name__)

TASKS = ("text", "images", "transactions")


def train_config_slice(cfg: PipelineConfig, task: str) -> dict[str, Any]:
    """What determines a task's trained model: the shared training settings and the task's
    own section (other tasks' sections are left out, so changing one retrains only it)."""
    train = to_dict(cfg.train)
    for other in TASKS:
        if other != task:
            train.pop(other, None)
    return {"train": train, "max_pixels": cfg.inputs.images.max_pixels}


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def run_train(ctx: StageContext, task: str) -> StageResult:
    """Train one task and record its result in the stage folder."""
    from pipeline.train.trainer import train_task

    # The stage runs because it has no output yet or because its data or config changed:
    # checkpoints of an earlier version are moved aside, not resumed (nor refused).
    result = train_task(ctx.cfg, task, ctx.run.stage(f"dedup/{task}"), ctx.run,
                        supersede=True)
    body = result.to_json()
    fs, path = filesystem(join(ctx.staging_url, "result.json"))
    with fs.open(path, "wb") as fh:
        fh.write((json.dumps(body, indent=2, sort_keys=True, default=str) + "\n").encode())
    final = {k: _finite(float(v)) for k, v in result.final_metrics.items()
             if isinstance(v, (int, float))}
    summary = (f"{len(result.history)} epoch(s), best val_loss {result.best_val_loss:.4f}"
               + (f", resumed from {result.resumed_from}" if result.resumed_from else ""))
    return StageResult(
        row_counts={"epochs": len(result.history)},
        extra={"best_checkpoint": result.best_checkpoint,
               "best_val_loss": _finite(float(result.best_val_loss)),
               "final_metrics": final, "data_digest": result.data_digest,
               "config_digest": result.config_digest, "report": result.report_url},
        summary=summary)


def train_stage(task: str) -> Stage:
    """The `train/<task>` stage (enabled by `train.<task>.enabled` and `modalities`)."""
    return Stage(
        name=f"train/{task}",
        run=lambda ctx: run_train(ctx, task),
        config_of=lambda cfg: train_config_slice(cfg, task),
        inputs=(f"dedup/{task}",),
        enabled=lambda cfg: task in cfg.modalities and getattr(cfg.train, task).enabled,
        description=f"train the {task} model with Ray Train",
        kind="ray",
    )
