"""The `train/<modality>` stages: Ray Train on the `dedup/<modality>` split tables.

The stage output is one file, `result.json`: the training report (best and latest
checkpoint, final metrics, per-epoch history, digests, timings, the task state the model
was built with), published with the stage's manifest. The checkpoints themselves live in
`<run>/checkpoints/train_<modality>/`, where Ray Train writes them while training runs. An
interrupted stage re-runs through `train_task`, which resumes from the last complete
checkpoint, so no finished step is trained twice.

Torch-free at import: the run summary reads results with `read_train_result`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from pipeline import modalities
from pipeline.config import PipelineConfig, to_dict
from pipeline.jsonutil import json_clean
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import Location, read_manifest, sha256_bytes

log = logging.getLogger(__name__)

#: the train stage's report, the one file it publishes
RESULT_FILE = "result.json"


def train_config_slice(cfg: PipelineConfig, modality: str) -> dict[str, Any]:
    """What determines a modality's trained model: the shared training settings, its own
    section and the settings outside `train` its spec names (other modalities' sections are
    left out, so changing one retrains only it)."""
    spec = modalities.get(modality)
    train = to_dict(cfg.train)
    for other in modalities.names():
        if other != modality:
            train.pop(other, None)
    extra = dict(spec.training.extra_config(cfg)) if spec.training is not None else {}
    return {"train": train, **extra}


def read_train_result(train_stage: Location) -> dict[str, Any]:
    """The `result.json` a published `train/<modality>` stage lists in its manifest, its
    bytes checked against the manifest's SHA-256 (ValueError when unlisted, changed or not
    a JSON object; MissingManifestError when the stage is not published)."""
    manifest = read_manifest(train_stage)
    try:
        entry = manifest.file(RESULT_FILE)
    except KeyError:
        raise ValueError(f"{train_stage}: the manifest lists no {RESULT_FILE} (files: "
                         f"{[f.path for f in manifest.files]})") from None
    data = (train_stage / RESULT_FILE).read_bytes()
    if sha256_bytes(data) != entry.sha256:
        raise ValueError(f"{train_stage}/{RESULT_FILE} does not match its manifest "
                         f"(sha256 {sha256_bytes(data)[:12]} != {entry.sha256[:12]})")
    body = json.loads(data.decode())
    if not isinstance(body, dict):
        raise ValueError(f"{train_stage}/{RESULT_FILE} holds {type(body).__name__}, not an "
                         f"object")
    return body


class EmptySplitError(ValueError):
    """The train split has no rows: there is nothing to train on (not retried)."""


def check_train_split(modality: str, dedup_counts: Mapping[str, int]) -> None:
    """Refuse to train on an empty train split, with a message naming the split counts
    and how many rows dedup kept of its input (EmptySplitError)."""
    splits = {s: int(dedup_counts.get(f"split.{s}", 0)) for s in ("train", "val", "test")}
    if splits["train"] > 0:
        return
    raise EmptySplitError(
        f"train/{modality}: the train split is empty (train {splits['train']}, val "
        f"{splits['val']}, test {splits['test']}; dedup kept {dedup_counts.get('kept', 0)} "
        f"of {dedup_counts.get('input', 0)} curated rows): nothing to train on. Check the "
        f"ingest/{modality} quarantine, or disable the task (train.{modality}.enabled: false)")


def run_train(ctx: StageContext, modality: str) -> StageResult:
    """Train one modality and publish its result in the stage folder."""
    from pipeline.train.trainer import train_task

    name = f"train/{modality}"
    check_train_split(modality, ctx.inputs[f"dedup/{modality}"].row_counts)
    # The stage runs because it has no output yet or because its data or config changed:
    # checkpoints of an earlier version are moved aside, not resumed (nor refused).
    result = train_task(ctx.cfg, modality, ctx.input(f"dedup/{modality}"), ctx.run,
                        supersede=True)
    body = json_clean(result.to_json())
    (ctx.output / RESULT_FILE).write_json(body)
    report = ctx.run.stage(name) / RESULT_FILE
    final = {k: v for k, v in body["final_metrics"].items() if isinstance(v, (int, float))}
    best = body["best_val_loss"]
    summary = (f"{len(result.history)} epoch(s), best val_loss "
               + (f"{best:.4f}" if best is not None else "undefined")
               + (f", resumed from {result.resumed_from}" if result.resumed_from else ""))
    log.info("%s: %s; report %s", modality, summary, report)
    return StageResult(
        row_counts={"epochs": len(result.history)},
        extra={"best_checkpoint": result.best_checkpoint, "best_val_loss": best,
               "final_metrics": final, "data_digest": result.data_digest,
               "config_digest": result.config_digest, "report": report.url,
               "reports": [RESULT_FILE]},
        summary=summary)


def train_stage(modality: str) -> Stage:
    """The `train/<modality>` stage (enabled by `train.<modality>.enabled` and
    `modalities`); ValueError when the modality trains no model."""
    spec = modalities.get(modality)
    if spec.training is None:
        raise ValueError(f"modality {modality!r} has no training task")
    return Stage(
        name=f"train/{modality}",
        run=lambda ctx: run_train(ctx, modality),
        config_of=lambda cfg: train_config_slice(cfg, modality),
        inputs=(f"dedup/{modality}",),
        enabled=spec.trains,
        disabled_reason=spec.disabled_reason,
        description=f"train the {modality} model with Ray Train",
        kind="ray",
        factory="pipeline.train.stage:train_stage",
        args=(modality,),
    )
