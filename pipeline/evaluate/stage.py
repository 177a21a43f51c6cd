"""The `evaluate/<task>` stages: score the best checkpoint on the test split.

`run_evaluate` (one task):

1. finds the checkpoint the `train/<task>` stage retained as best, and checks that it was
   trained on this run's data: the digest recorded by the train stage and by the
   checkpoint itself must both equal the `dedup/<task>` manifest's content digest; the
   weights' SHA-256 is verified on load (pipeline.evaluate.model);
2. scores the `test` split (and `val`, where the fraud decision threshold is chosen)
   through the Ray Data actor pool (pipeline.evaluate.inference), sorted by id;
3. computes the figures (pipeline.evaluate.figures), generates text samples, checks the
   gates, and writes `metrics.json` + `predictions/<split>.parquet` in the stage folder and
   `reports/evaluate_<task>.html` / `.json`;
4. raises `QualityGateError` (naming each metric, value and threshold) after the report is
   written, so a failed run still shows why.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.config import PipelineConfig, to_dict
from pipeline.evaluate import inference
from pipeline.evaluate.figures import finite_or_none, task_figures
from pipeline.evaluate.model import TrainedModel, best_checkpoint, load_trained
from pipeline.evaluate.report import write_evaluation_report
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import filesystem, join, published_files, read_manifest
from pipeline.train.checkpoint import CheckpointMismatchError
from pipeline.train.tasks.text import TextLMTask

log = logging.getLogger(__name__)

TASKS = ("text", "images", "transactions")
#: the gates that read each task's metrics (pipeline.quality)
TASK_GATES: Mapping[str, tuple[str, ...]] = {
    "text": ("max_text_bits_per_byte", "max_text_perplexity"),
    "images": ("min_image_accuracy", "min_image_macro_f1"),
    "transactions": ("min_fraud_pr_auc", "min_fraud_roc_auc"),
}
#: splits scored per task: the fraud threshold is chosen on val, never on test
SPLITS: Mapping[str, tuple[str, ...]] = {"text": ("test",), "images": ("test",),
                                         "transactions": ("val", "test")}


def evaluate_config_slice(cfg: PipelineConfig, task: str) -> dict[str, Any]:
    """What determines a task's evaluation output (besides its inputs' manifests)."""
    return {"evaluate": to_dict(cfg.evaluate),
            "gates": {g: getattr(cfg.gates, g) for g in TASK_GATES[task]}}


def json_clean(obj: Any) -> Any:
    """JSON-ready data: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): json_clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _tag(table: pa.Table, split: str) -> pa.Table:
    return table.append_column(inference.SPLIT_COLUMN,
                               pa.array([split] * table.num_rows, pa.string()))


def score_splits(cfg: PipelineConfig, task: str, data_url: str, splits: tuple[str, ...],
                 spec: inference.ModelSpec) -> dict[str, pa.Table]:
    """Sorted prediction rows of each split of the run's `dedup/<task>` table, scored in
    one pass through the actor pool (one pool start, however many splits)."""
    from functools import partial

    from pipeline.train.data import read_split

    parts = [read_split(data_url, split, inference.input_columns(task),
                        options=dict(cfg.storage.options)).map_batches(
                            partial(_tag, split=split), batch_format="pyarrow")
             for split in splits]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    table = inference.collect_sorted(inference.score(ds, spec), task)
    if not table.num_rows:
        raise ValueError(f"{data_url}: no rows in the {'/'.join(splits)} split(s); nothing "
                         f"to evaluate (see the split.* ratios)")
    tags = table.column(inference.SPLIT_COLUMN)
    rest = table.drop_columns([inference.SPLIT_COLUMN])
    return {split: rest.filter(pc.equal(tags, split)) for split in splits}


def text_samples(cfg: PipelineConfig, trained: TrainedModel, data_url: str,
                 test: pa.Table) -> list[dict[str, str]]:
    """`evaluate.num_samples` continuations of seeded test-document prompts."""
    ev = cfg.evaluate
    ids = test.column("doc_id").to_pylist()
    if not ids or ev.num_samples == 0:
        return []
    rng = np.random.default_rng(ev.seed)
    chosen = sorted(str(ids[i]) for i in rng.choice(len(ids), min(ev.num_samples, len(ids)),
                                                    replace=False))
    texts: dict[str, str] = {}
    options = dict(cfg.storage.options)
    for url in published_files(data_url, prefix="data/", suffix=".parquet", options=options):
        fs, path = filesystem(url, options)
        with fs.open(path, "rb") as fh:
            part = pq.read_table(fh, columns=["doc_id", "text"],
                                 filters=[("split", "==", "test"), ("doc_id", "in", chosen)])
        texts.update(zip(part.column("doc_id").to_pylist(), part.column("text").to_pylist(),
                         strict=True))
    task = trained.task
    assert isinstance(task, TextLMTask)
    out = []
    for i, doc_id in enumerate(chosen):
        text = texts.get(doc_id) or ""
        prompt = text[:ev.prompt_chars]
        gen = torch.Generator().manual_seed(ev.seed + i)
        continuation = task.generate(trained.model, prompt, ev.max_new_tokens, ev.temperature, gen)
        out.append({"doc_id": doc_id, "prompt": prompt, "continuation": continuation,
                    "reference": text[ev.prompt_chars:ev.prompt_chars + ev.max_new_tokens]})
    return out


def _write_table(staging_url: str, rel: str, table: pa.Table) -> None:
    fs, path = filesystem(join(staging_url, rel))
    with fs.open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def _summary(task: str, m: Mapping[str, float | None]) -> str:
    def f(key: str) -> str:
        v = m.get(key)
        return "undefined" if v is None else f"{v:.4f}"

    if task == "text":
        return f"test perplexity {f('perplexity')}, {f('bits_per_byte')} bits/byte"
    if task == "images":
        return f"test accuracy {f('accuracy')}, macro-F1 {f('macro_f1')}"
    return (f"test ROC-AUC {f('roc_auc')}, PR-AUC {f('pr_auc')}; at threshold "
            f"{f('threshold')}: precision {f('precision')}, recall {f('recall')}")


def run_evaluate(ctx: StageContext, task: str) -> StageResult:
    """Evaluate one task's best checkpoint on the run's test split (see module doc)."""
    from pipeline.quality import QualityGateError, evaluate_gates
    from pipeline.ray_env import init_ray

    cfg, run = ctx.cfg, ctx.run
    options = dict(cfg.storage.options)
    data_url, train_url = run.stage(f"dedup/{task}"), run.stage(f"train/{task}")
    data_manifest = ctx.inputs.get(f"dedup/{task}") or read_manifest(data_url, options)
    data_digest = data_manifest.content_digest
    ref = best_checkpoint(train_url, options)
    if ref.data_digest != data_digest:
        raise CheckpointMismatchError(
            f"train/{task} trained on data with manifest digest {ref.data_digest}, but this "
            f"run's dedup/{task} has manifest digest {data_digest}: retrain before evaluating")
    trained = load_trained(cfg, task, ref.checkpoint_url, ref.task_state,
                           expected_data_digest=data_digest, options=options)
    init_ray(cfg.ray)
    spec = inference.ModelSpec(cfg, task, trained.checkpoint_url, trained.checkpoint_digest,
                               trained.task_state)
    predictions = score_splits(cfg, task, data_url, SPLITS[task], spec)
    if not predictions["test"].num_rows:
        raise ValueError(f"{data_url}: the test split has no rows; nothing to evaluate")
    for split, table in predictions.items():
        _write_table(ctx.staging_url, f"predictions/{split}.parquet", table)
    labels = list(trained.task_state.get("labels") or [])
    raw, details = task_figures(task, predictions, labels, cfg.evaluate.curve_points)
    metrics = finite_or_none(raw)
    gates = evaluate_gates({"modality": task, "metrics": metrics}, cfg.gates)
    samples = (text_samples(cfg, trained, data_url, predictions["test"])
               if task == "text" else [])
    summary = _summary(task, metrics)
    html_url = join(run.reports, f"evaluate_{task}.html")
    body = json_clean({
        "task": task, "run_id": run.run_id, "metrics": metrics, "details": details,
        "gates": [g.to_dict() for g in gates], "samples": samples,
        "sampling": {"temperature": cfg.evaluate.temperature,
                     "max_new_tokens": cfg.evaluate.max_new_tokens},
        "checkpoint": trained.checkpoint_url, "checkpoint_digest": trained.checkpoint_digest,
        "data_digest": data_digest, "rows": {s: t.num_rows for s, t in predictions.items()},
        "summary": summary})
    fs, path = filesystem(join(ctx.staging_url, "metrics.json"))
    with fs.open(path, "wb") as fh:
        fh.write((json.dumps(body, indent=2, sort_keys=True) + "\n").encode())
    write_evaluation_report({**body, "history": json_clean(ref.history)}, html_url,
                            join(run.reports, f"evaluate_{task}.json"), options)
    log.info("%s: %s; report %s", task, summary, html_url)
    failures = [g for g in gates if not g.passed]
    if failures:
        raise QualityGateError(failures)
    return StageResult(
        row_counts={s: t.num_rows for s, t in predictions.items()},
        extra={"metrics": metrics, "checkpoint": trained.checkpoint_url,
               "checkpoint_digest": trained.checkpoint_digest, "data_digest": data_digest,
               "report": html_url, "gates": [g.to_dict() for g in gates]},
        summary=summary)


def evaluate_stage(task: str) -> Stage:
    """The `evaluate/<task>` stage (enabled like `train/<task>`)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return Stage(
        name=f"evaluate/{task}",
        run=lambda ctx: run_evaluate(ctx, task),
        config_of=lambda cfg: evaluate_config_slice(cfg, task),
        inputs=(f"train/{task}", f"dedup/{task}"),
        enabled=lambda cfg: task in cfg.modalities and getattr(cfg.train, task).enabled,
        description=f"score the {task} model on the test split, report, gates",
        kind="ray",
    )
