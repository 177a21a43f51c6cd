"""Batch inference: score any Parquet table with a trained model, with lineage.

`predict_table(cfg, modality, input, output)` reads a Parquet file, or every Parquet file
of a folder (only the files its manifest lists when it is a published stage), checks that
each has the columns the model needs (the modality's id and feature columns, from its
spec), scores the rows through the same Ray Data actor pool as the evaluate stage and
publishes `predictions/part-00000.parquet` under `output` with `StageWriter` (files first,
`_MANIFEST.json` last). `output` is replaced only when it is new, empty or an earlier
`predict/<modality>` output, and never when it overlaps the input (`check_output`). The
manifest's `extra` records the lineage: the checkpoint URL and the SHA-256 of its
model.pt, the input URL and a digest of the input files (relative path, size, SHA-256 of
each).

Rows are sorted by id, then by a key of (file, row position), with a distributed Ray sort
streamed to the writer, so the same input gives the same bytes and predictions never have
to fit in the driver's memory at once.
"""

from __future__ import annotations

import logging
import posixpath
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
    Location,
    OutputFolderError,
    StageWriter,
    check_replaceable,
    digest_of,
    file_digest,
    overlapping,
    published_files,
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


def input_files(source: Location) -> tuple[Location, list[Location]]:
    """(root folder, Parquet files) of a file or folder. A folder with a manifest
    contributes the Parquet files it lists, only those under `data/` when it has them (a
    dedup stage: its `duplicates/` and `quarantine/` tables are not the data); otherwise
    every `*.parquet` below it, skipping hidden and `_`-prefixed entries (staging
    folders, Spark markers)."""
    fs, path = source.filesystem()
    if fs.isfile(path):
        return source.parent, [source]
    if not fs.isdir(path):
        raise FileNotFoundError(f"{source}: no such file or folder")
    if fs.exists(posixpath.join(path, MANIFEST_NAME)):
        files = (published_files(source, prefix="data/", suffix=".parquet")
                 or published_files(source, suffix=".parquet"))
    else:
        files = [source.at(source.url_of(p)) for p in sorted(fs.find(path))
                 if p.endswith(".parquet") and not any(
                     part.startswith(("_", ".")) for part in
                     posixpath.relpath(p, path).split("/"))]
    if not files:
        raise ValueError(f"{source}: no Parquet files to score")
    return source, files


def check_output(source: Location, output: Location, modality: str) -> None:
    """Refuse (`OutputFolderError`) an output folder that is, contains or lies inside the
    input (publishing replaces the folder, so the input would be deleted or rescored), or
    that holds anything but an earlier `predict/<modality>` output (`check_replaceable`)."""
    if overlapping(source, output):
        raise OutputFolderError(
            f"--output {output} overlaps --input {source}: publishing replaces the output "
            "folder, so choose a folder outside the input")
    check_replaceable(output, f"predict/{modality}")


def check_schema(modality: str, files: list[Location],
                 cfg: PipelineConfig | None = None) -> list[str]:
    """The columns to read; ValueError naming the missing columns and the expected schema
    when a file lacks any required one (with `cfg`, the columns its configuration adds,
    e.g. declared transaction features, are required too)."""
    ev = inference.evaluation_of(modality)
    required = inference.input_columns(modality, (), cfg)
    present: set[str] | None = None
    for file in files:
        with file.open("rb") as fh:
            names = set(pq.read_schema(fh).names)
        missing = [c for c in required if c not in names]
        if missing:
            raise ValueError(
                f"{file}: missing column(s) {', '.join(missing)} for the {modality} model; "
                f"expected columns: {', '.join(required)}"
                + (f" (optional: {ev.label_column})" if ev.label_column else "")
                + f"; predictions will have {ev.prediction_schema}")
        present = names if present is None else present & names
    return inference.input_columns(modality, present, cfg)


def _input_digest(root: Location, files: list[Location]) -> str:
    entries = []
    for file in files:
        fs, path = file.filesystem()
        entries.append({"path": posixpath.relpath(file.url, root.url),
                        "size": int(fs.size(path)), "sha256": file_digest(fs, path)})
    return digest_of(entries)


def _dataset(root: Location, files: list[Location], columns: list[str]) -> Any:
    import ray.data

    fs, base = root.arrow_filesystem()
    sub = pafs.SubTreeFileSystem(base.rstrip("/"), fs)
    # Paths relative to the input root: the row key (hash of path and position) does not
    # depend on where the table lives.
    rel = [posixpath.relpath(f.arrow_filesystem()[1], base) for f in files]
    ds = ray.data.read_parquet(rel, filesystem=sub, include_row_hash=True)
    ds = ds.select_columns([*columns, "row_hash"])  # pushed down into the scan
    return ds.rename_columns({"row_hash": inference.ORDER_COLUMN})


def predict_table(cfg: PipelineConfig, modality: str, source: Location | str,
                  output: Location | str, checkpoint: Location | str | None = None
                  ) -> PredictResult:
    """Score the Parquet table at `source`; publish the predictions under `output`.

    URL strings are read with the options of `cfg.storage`. `checkpoint` None: the best
    checkpoint of the run's `train/<modality>` stage."""
    from pipeline.orchestrator.plan import run_paths
    from pipeline.ray_env import init_ray

    ev = inference.evaluation_of(modality)  # ValueError for a modality without a model
    store = cfg.storage.location
    source = store.at(source) if isinstance(source, str) else source
    output = store.at(output) if isinstance(output, str) else output
    root, files = input_files(source)
    check_output(source, output, modality)  # before any work: the model, Ray, scoring
    columns = check_schema(modality, files, cfg)
    input_digest = _input_digest(root, files)
    task_state = None
    if checkpoint is None:
        ref = best_checkpoint(run_paths(cfg).stage(f"train/{modality}"))
        checkpoint, task_state = ref.checkpoint, ref.task_state
    trained = load_trained(cfg, modality, checkpoint, task_state)
    init_ray(cfg.ray)
    spec = inference.ModelSpec(cfg, modality, trained.checkpoint, trained.checkpoint_digest,
                               trained.task_state)
    scored = inference.score(_dataset(root, files, columns), spec)
    writer = StageWriter(output, f"predict/{modality}", guard_existing=True)
    rows = 0
    out: pq.ParquetWriter | None = None
    try:
        with (writer.staging / OUTPUT_FILE).open("wb") as fh:
            for batch in inference.stream_sorted(scored, modality):
                if out is None:
                    out = pq.ParquetWriter(fh, batch.schema, compression="zstd")
                out.write_table(batch.cast(out.schema))
                rows += batch.num_rows
            if out is None:  # no rows: still publish an (empty) table with the id column
                pq.write_table(pa.table({inference.id_column(modality):
                                         pa.array([], pa.string())}), fh)
            else:
                out.close()
        manifest = writer.publish(
            row_counts={"predictions": rows},
            extra={"modality": modality, "model_checkpoint": trained.checkpoint_url,
                   "model_digest": trained.checkpoint_digest, "input_url": source.url,
                   "input_digest": input_digest, "input_files": len(files),
                   "prediction_schema": ev.prediction_schema})
    except BaseException:
        writer.abort()
        raise
    log.info("%s: scored %d rows of %s (%d files, digest %s) with %s; published %s",
             modality, rows, source, len(files), input_digest[:12], trained.checkpoint_url,
             output)
    return PredictResult(output_url=output.url, rows=rows,
                         checkpoint_url=trained.checkpoint_url,
                         checkpoint_digest=trained.checkpoint_digest,
                         input_url=source.url, input_digest=input_digest,
                         manifest_digest=manifest.digest)
