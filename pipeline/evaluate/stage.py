"""The `evaluate/<modality>` stages: score the best checkpoint on the test split.

`run_evaluate` (one modality, everything modality-specific from its spec's `evaluation`):

1. finds the checkpoint the `train/<modality>` stage retained as best, and checks that it
   was trained on this run's data: the digest recorded by the train stage and by the
   checkpoint itself must both equal the `dedup/<modality>` manifest's content digest; the
   weights' SHA-256 is verified on load (pipeline.evaluate.model);
2. scores the spec's splits (`test`, and `val` where a decision threshold is chosen),
   sorted by id: in this process when the dedup manifest counts at most
   `evaluate.in_process_max_rows` rows in them, otherwise through the Ray Data actor
   pool (pipeline.evaluate.inference);
3. computes the spec's figures and samples and checks its metric gates;
4. writes its whole output into the stage folder, published with the manifest:
   `predictions/<split>.parquet`, `metrics.json` (the report's data) and `report.html`;
5. when a gate fails, publishes nothing: it writes the report, with a banner saying that
   the stage did not publish and why, to `<run>/reports/failed/evaluate_<modality>.html`
   (+ `.json`) and raises `EvaluationGateError` (naming each metric, value, threshold and
   that report). The runner removes it once the stage is done or cached again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import modalities
from pipeline.config import PipelineConfig, to_dict
from pipeline.evaluate import inference
from pipeline.evaluate.figures import finite_or_none
from pipeline.evaluate.model import TrainedModel, best_checkpoint, load_trained
from pipeline.evaluate.report import write_evaluation_report
from pipeline.gates import UNDEFINED_KEY, GateResult, QualityGateError, evaluate_gates
from pipeline.jsonutil import json_clean
from pipeline.modalities import EvaluationSpec
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import Location, Manifest, RunPaths, read_manifest
from pipeline.train.checkpoint import CheckpointMismatchError

log = logging.getLogger(__name__)

#: the stage's files besides predictions/<split>.parquet
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


class EvaluationGateError(QualityGateError):
    """A metric gate failed: the stage did not publish; its report is at `report`."""

    def __init__(self, failures: list[GateResult], report: Location) -> None:
        super().__init__(failures)
        self.report = report
        self.args = (f"{self.args[0]}; the stage did not publish, its report is "
                     f"{report.url}",)


def _evaluation(modality: str) -> EvaluationSpec:
    spec = modalities.get(modality).evaluation
    if spec is None:
        raise ValueError(f"modality {modality!r} has no model to evaluate")
    return spec


def evaluate_config_slice(cfg: PipelineConfig, modality: str) -> dict[str, Any]:
    """What determines a modality's evaluation output (besides its inputs' manifests)."""
    gates = modalities.get(modality).metric_gates
    return {"evaluate": to_dict(cfg.evaluate),
            "gates": {g.field: getattr(cfg.gates, g.field) for g in gates}}


def failed_report(run: RunPaths, modality: str) -> tuple[Location, Location]:
    """(HTML, JSON) of the report of an evaluation that failed a gate (not published)."""
    from pipeline.orchestrator.reports import failed_report as at

    name = f"evaluate/{modality}"
    return at(run, name, ".html"), at(run, name, ".json")


def _tag(table: pa.Table, split: str) -> pa.Table:
    return table.append_column(inference.SPLIT_COLUMN,
                               pa.array([split] * table.num_rows, pa.string()))


def split_rows(manifest: Manifest, splits: Sequence[str]) -> int | None:
    """Rows of `splits` by the split stage's manifest (None when it does not count them)."""
    counts = [manifest.row_counts.get(f"split.{split}") for split in splits]
    return None if any(c is None for c in counts) else sum(int(c or 0) for c in counts)


def score_splits(modality: str, data: Location, splits: Sequence[str],
                 spec: inference.ModelSpec, trained: TrainedModel | None = None,
                 rows: int | None = None) -> dict[str, pa.Table]:
    """Sorted prediction rows of each split of the published split stage `data`, scored
    in one pass: in this process (with `trained`, the model already loaded here) when
    `rows` is known and small (`inference.scores_in_process`), otherwise through the actor
    pool (one pool start, however many splits)."""
    from pipeline.train.data import read_split, read_split_table

    columns = inference.input_columns(modality, cfg=spec.cfg)
    ev = spec.cfg.evaluate
    if trained is not None and inference.scores_in_process(rows, ev):
        log.info("%s: scoring %s rows of the %s split(s) in this process (at most "
                 "evaluate.in_process_max_rows = %s; a pool of model actors would take "
                 "longer to start)", modality, f"{rows:,}", "/".join(splits),
                 f"{ev.in_process_max_rows:,}")
        scored = inference.score_in_process(
            trained, [_tag(read_split_table(data, split, columns), split) for split in splits],
            ev.batch_size, ev.cpus_per_actor)
        table = inference.sort_predictions(scored, modality)
    else:
        log.info("%s: scoring %s rows of the %s split(s) on %d model actor(s) (more than "
                 "evaluate.in_process_max_rows = %s)", modality,
                 "?" if rows is None else f"{rows:,}", "/".join(splits), ev.actors,
                 f"{ev.in_process_max_rows:,}")
        parts = [read_split(data, split, columns).map_batches(partial(_tag, split=split),
                                                             batch_format="pyarrow")
                 for split in splits]
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        table = inference.collect_sorted(inference.score(ds, spec), modality)
    if not table.num_rows:
        raise ValueError(f"{data}: no rows in the {'/'.join(splits)} split(s); nothing "
                         f"to evaluate (see the split.* ratios)")
    tags = table.column(inference.SPLIT_COLUMN)
    rest = table.drop_columns([inference.SPLIT_COLUMN])
    return {split: rest.filter(pc.equal(tags, split)) for split in splits}


def _write_table(target: Location, table: pa.Table) -> None:
    with target.open("wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def run_evaluate(ctx: StageContext, modality: str) -> StageResult:
    """Evaluate one modality's best checkpoint on the run's test split (see module doc)."""
    from pipeline.ray_env import init_ray

    cfg, run = ctx.cfg, ctx.run
    ev = _evaluation(modality)
    gate_specs = modalities.get(modality).metric_gates
    name = f"evaluate/{modality}"
    data_name, train_name = f"dedup/{modality}", f"train/{modality}"
    data = ctx.input(data_name)
    data_manifest = ctx.inputs.get(data_name) or read_manifest(data)
    data_digest = data_manifest.content_digest
    ref = best_checkpoint(ctx.input(train_name))
    if ref.data_digest != data_digest:
        raise CheckpointMismatchError(
            f"{train_name} trained on data with manifest digest {ref.data_digest}, but this "
            f"run's {data_name} has manifest digest {data_digest}: retrain before evaluating")
    trained = load_trained(cfg, modality, ref.checkpoint, ref.task_state,
                           expected_data_digest=data_digest)
    init_ray(cfg.ray)
    model = inference.ModelSpec(cfg, modality, trained.checkpoint, trained.checkpoint_digest,
                                trained.task_state)
    predictions = score_splits(modality, data, ev.splits, model, trained,
                               split_rows(data_manifest, ev.splits))
    if not predictions["test"].num_rows:
        raise ValueError(f"{data}: the test split has no rows; nothing to evaluate")
    labels = list(trained.task_state.get("labels") or [])
    raw, details = ev.figures(predictions, labels, cfg.evaluate.curve_points)
    metrics = finite_or_none(raw)
    # A gate on an undefined (None) metric fails, quoting why it is undefined.
    why = {f"metrics.{k}": v for k, v in (details.get("undefined") or {}).items()}
    gates = evaluate_gates({"modality": modality, "metrics": metrics, UNDEFINED_KEY: why},
                           cfg.gates, gate_specs)
    samples = (ev.samples(cfg, trained, data, predictions["test"])
               if ev.samples is not None else [])
    summary = ev.summary(metrics)
    rows = {s: t.num_rows for s, t in predictions.items()}
    body = json_clean({
        "modality": modality, "run_id": run.run_id, "metrics": metrics, "details": details,
        "gates": [g.to_dict() for g in gates], "samples": samples,
        "sampling": {"temperature": cfg.evaluate.temperature,
                     "max_new_tokens": cfg.evaluate.max_new_tokens},
        "checkpoint": trained.checkpoint_url, "checkpoint_digest": trained.checkpoint_digest,
        "data_digest": data_digest, "rows": rows, "summary": summary,
        "history": ref.history})
    failed_html, failed_json = failed_report(run, modality)
    failures = [g for g in gates if not g.passed]
    if failures:
        banner = (f"This stage ({name}) did not publish: "
                  + "; ".join(f.message for f in failures)
                  + ". Nothing of this evaluation was published; this report is kept for "
                    "inspection and is removed once the stage is done.")
        write_evaluation_report(body, failed_html, failed_json, banner)
        log.error("%s: %s; the stage did not publish, report %s", modality, summary,
                  failed_html)
        raise EvaluationGateError(failures, failed_html)
    for split, table in predictions.items():
        _write_table(ctx.output / "predictions" / f"{split}.parquet", table)
    write_evaluation_report(body, ctx.output / REPORT_FILE, ctx.output / METRICS_FILE)
    report = run.stage(name) / REPORT_FILE
    log.info("%s: %s; report %s", modality, summary, report)
    return StageResult(
        row_counts=rows,
        extra={"metrics": metrics, "checkpoint": trained.checkpoint_url,
               "checkpoint_digest": trained.checkpoint_digest, "data_digest": data_digest,
               "report": report.url, "reports": [REPORT_FILE, METRICS_FILE],
               "gates": body["gates"]},
        summary=summary)


def evaluate_stage(modality: str) -> Stage:
    """The `evaluate/<modality>` stage (enabled like `train/<modality>`); ValueError when
    the modality has no model to evaluate."""
    _evaluation(modality)
    spec = modalities.get(modality)
    return Stage(
        name=f"evaluate/{modality}",
        run=lambda ctx: run_evaluate(ctx, modality),
        config_of=lambda cfg: evaluate_config_slice(cfg, modality),
        inputs=(f"train/{modality}", f"dedup/{modality}"),
        enabled=spec.trains,
        disabled_reason=spec.disabled_reason,
        description=f"score the {modality} model on the test split, report, gates",
        kind="ray",
        factory="pipeline.evaluate.stage:evaluate_stage",
        args=(modality,),
    )
