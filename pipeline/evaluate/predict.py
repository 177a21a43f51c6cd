"""Batch inference: score any Parquet table with a trained model, with lineage.

`predict_table(cfg, task, input_url, output_url)` reads a Parquet file, or every Parquet
file of a folder (only the files its manifest lists when it is a published stage), checks
that each has the columns the model needs, scores the rows through the same Ray Data actor
pool as the evaluate stage and publishes `predictions/part-00000.parquet` under
`output_url` with `StageWriter` (files first, `_MANIFEST.json` last). The manifest's
`extra` records the lineage: the checkpoint URL and the SHA-256 of its model.pt, the input
URL and a digest of the input files (relative path, size, SHA-256 of each).

Rows are sorted by id, then by a key of (file, row position), with a distributed Ray sort
streamed to the writer, so the same input gives the same bytes and predictions never have
to fit in the driver's memory at once.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import PipelineConfig
from pipeline.evaluate import inference
from pipeline.evaluate.model import best_checkpoint, load_trained
from pipeline.storage import (
    MANIFEST_NAME,
    RunPaths,
    StageWriter,
    digest_of,
    file_digest,
    filesystem,
    join,
    published_files,
    to_url,
)

log = logging.getLogger(__name__)

OUTPUT_FILE = "predictions/part-00000.parquet"


@dataclass(frozen=True)
class PredictResult:
    """What one batch-inference call published."""

    output_url: str
    rows: int
    checkpoint_url: str
    checkpoint_digest: str
    input_url: str
    input_digest: str
    manifest_digest: str


def input_files(input_url: str, options: Mapping[str, Any] | None = None
                ) -> tuple[str, list[str]]:
    """(root URL, URLs of the Parquet files) of a file or folder URL. A folder with a
    manifest contributes the Parquet files it lists; otherwise every `*.parquet` below it,
    skipping hidden and `_`-prefixed entries (staging folders, Spark markers)."""
    url = to_url(input_url).rstrip("/")
    fs, path = filesystem(url, options)
    if fs.isfile(path):
        return url.rsplit("/", 1)[0], [url]
    if not fs.isdir(path):
        raise FileNotFoundError(f"{input_url}: no such file or folder")
    if fs.exists(posixpath.join(path, MANIFEST_NAME)):
        files = published_files(url, suffix=".parquet", options=options)
    else:
        protocol = url.split("://", 1)[0]
        files = [f"{protocol}://{p}" for p in sorted(fs.find(path))
                 if p.endswith(".parquet") and not any(
                     part.startswith(("_", ".")) for part in
                     posixpath.relpath(p, path).split("/"))]
    if not files:
        raise ValueError(f"{input_url}: no Parquet files to score")
    return url, files


def check_schema(task_name: str, files: list[str], options: Mapping[str, Any] | None = None
                 ) -> list[str]:
    """The columns to read; ValueError naming the missing columns and the expected schema
    when a file lacks any required one."""
    required = inference.required_columns(task_name)
    present: set[str] | None = None
    for url in files:
        fs, path = filesystem(url, options)
        with fs.open(path, "rb") as fh:
            names = set(pq.read_schema(fh).names)
        missing = [c for c in required if c not in names]
        if missing:
            label = inference.LABEL_COLUMN.get(task_name)
            raise ValueError(
                f"{url}: missing column(s) {', '.join(missing)} for the {task_name} model; "
                f"expected columns: {', '.join(required)}"
                + (f" (optional: {label})" if label else "")
                + f"; predictions will have {inference.PREDICTION_SCHEMA_DOC[task_name]}")
        present = names if present is None else present & names
    return inference.input_columns(task_name, present)


def _input_digest(root: str, files: list[str], options: Mapping[str, Any] | None) -> str:
    entries = []
    for url in files:
        fs, path = filesystem(url, options)
        entries.append({"path": posixpath.relpath(url, root), "size": int(fs.size(path)),
                        "sha256": file_digest(fs, path)})
    return digest_of(entries)


def _dataset(root: str, files: list[str], columns: list[str],
             options: Mapping[str, Any] | None) -> Any:
    import ray.data

    from pipeline.train.data import arrow_filesystem

    fs, base = arrow_filesystem(root, options)
    sub = pafs.SubTreeFileSystem(base.rstrip("/"), fs)
    # Paths relative to the input root: the row key (hash of path and position) does not
    # depend on where the table lives.
    rel = [posixpath.relpath(arrow_filesystem(f, options)[1], base) for f in files]
    ds = ray.data.read_parquet(rel, filesystem=sub, include_row_hash=True)
    ds = ds.select_columns([*columns, "row_hash"])  # pushed down into the scan
    return ds.rename_columns({"row_hash": inference.ORDER_COLUMN})


def predict_table(cfg: PipelineConfig, task_name: str, input_url: str, output_url: str,
                  checkpoint_url: str | None = None) -> PredictResult:
    """Score the Parquet table at `input_url`; publish the predictions under `output_url`.

    `checkpoint_url` None: the best checkpoint of the run's `train/<task>` stage."""
    from pipeline.orchestrator.runner import run_id_of
    from pipeline.ray_env import init_ray

    if task_name not in inference.ID_COLUMN:
        raise ValueError(f"unknown task {task_name!r}; choose from "
                         f"{', '.join(inference.ID_COLUMN)}")
    options = dict(cfg.storage.options)
    root, files = input_files(input_url, options)
    columns = check_schema(task_name, files, options)
    input_digest = _input_digest(root, files, options)
    task_state = None
    if checkpoint_url is None:
        run = RunPaths(cfg.storage.root, run_id_of(cfg))
        ref = best_checkpoint(run.stage(f"train/{task_name}"), options)
        checkpoint_url, task_state = ref.checkpoint_url, ref.task_state
    trained = load_trained(cfg, task_name, checkpoint_url, task_state, options=options)
    init_ray(cfg.ray)
    spec = inference.ModelSpec(cfg, task_name, trained.checkpoint_url,
                               trained.checkpoint_digest, trained.task_state)
    scored = inference.score(_dataset(root, files, columns, options), spec)
    writer = StageWriter(output_url, stage=f"predict/{task_name}", options=options)
    fs, path = filesystem(join(writer.staging_url, OUTPUT_FILE), options)
    rows = 0
    out: pq.ParquetWriter | None = None
    try:
        with fs.open(path, "wb") as fh:
            for batch in inference.stream_sorted(scored, task_name):
                if out is None:
                    out = pq.ParquetWriter(fh, batch.schema, compression="zstd")
                out.write_table(batch.cast(out.schema))
                rows += batch.num_rows
            if out is None:  # no rows: still publish an (empty) table with the id column
                pq.write_table(pa.table({inference.ID_COLUMN[task_name]:
                                         pa.array([], pa.string())}), fh)
            else:
                out.close()
        manifest = writer.publish(
            row_counts={"predictions": rows},
            extra={"task": task_name, "model_checkpoint": trained.checkpoint_url,
                   "model_digest": trained.checkpoint_digest, "input_url": to_url(input_url),
                   "input_digest": input_digest, "input_files": len(files),
                   "prediction_schema": inference.PREDICTION_SCHEMA_DOC[task_name]})
    except BaseException:
        writer.abort()
        raise
    log.info("%s: scored %d rows of %s (%d files, digest %s) with %s; published %s",
             task_name, rows, input_url, len(files), input_digest[:12],
             trained.checkpoint_url, output_url)
    return PredictResult(output_url=to_url(output_url), rows=rows,
                         checkpoint_url=trained.checkpoint_url,
                         checkpoint_digest=trained.checkpoint_digest,
                         input_url=to_url(input_url), input_digest=input_digest,
                         manifest_digest=manifest.digest)
