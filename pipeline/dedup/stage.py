"""The dedup stages: curated Parquet -> deduplicated, split Parquet + duplicates, per
modality, then one `reports/dedup` stage that renders `dedup.html` + `dedup.json`.

`dedup/<modality>` runs its spec's dedup function (pipeline.modalities) and writes
`data/` (kept rows with `cluster_id` and `split`: the training input), `duplicates/`
(which record was dropped for which, by which rule, how similar) and `quarantine/` (what
the dedup itself quarantined, e.g. transactions' LABEL_CONFLICT rows). It fails unless
ingest input = kept + duplicates + quarantined (ingest's and its own), and it enforces the
quality gates before anything is published.

Every Parquet file is read and written through `pipeline.spark_io`, i.e. through the
stage folders' Locations and their fsspec options.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from pipeline import modalities
from pipeline.config import PipelineConfig, to_dict
from pipeline.dedup.exact import DUPLICATES_SCHEMA
from pipeline.ingest.common import QUARANTINE_SCHEMA
from pipeline.jsonutil import json_clean
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.spark_io import (
    parquet_files,
    read_parquet,
    spark_schema_fingerprint,
    write_parquet,
)
from pipeline.storage import Location, published_files

log = logging.getLogger(__name__)

DUPLICATE_KEYS = ("dropped_id",)
QUARANTINE_KEYS = ("source", "reason")


class DedupReconciliationError(RuntimeError):
    """Input != kept + duplicates + quarantined after dedup."""


def read_stage_table(spark: SparkSession, stage: Location, prefix: str,
                     schema: T.StructType | str | None = None) -> DataFrame:
    """The Parquet files a published stage's manifest lists under `prefix` (e.g.
    'curated/'). When it lists none, an empty table of `schema`; without a schema that is
    a ValueError naming the stage."""
    files = published_files(stage, prefix=prefix, suffix=".parquet")
    if not files and schema is None:
        raise ValueError(f"{stage.url} lists no Parquet files under {prefix}")
    return read_parquet(spark, files, schema)


def _empty_quarantine(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame([], QUARANTINE_SCHEMA)


def run_dedup(ctx: StageContext, modality: str) -> StageResult:
    """Dedup + split + quality gates of one modality into the stage's output folder."""
    from pipeline.gates import enforce_gates
    from pipeline.quality import quality_figures
    from pipeline.split import assign_split

    spec = modalities.get(modality)
    spark = ctx.spark
    ingest_name = f"ingest/{modality}"
    ingest_stage, ingest = ctx.input(ingest_name), ctx.inputs[ingest_name]
    # The dedup rules scan their input several times, and each scan of a Parquet read
    # through fsspec is a Python task: read the curated files once.
    curated = read_stage_table(spark, ingest_stage, "curated/").persist()
    out = spec.dedup(spark, curated, ctx.cfg)
    data = assign_split(out.kept, "cluster_id", ctx.cfg.split)
    data_dir, dup_dir = ctx.output / "data", ctx.output / "duplicates"
    quarantine_dir = ctx.output / "quarantine"
    try:
        n_kept = write_parquet(data, data_dir, [spec.id_column],
                               ctx.cfg.spark.shuffle_partitions)
        n_dup = write_parquet(out.duplicates, dup_dir, DUPLICATE_KEYS, 1)
        n_quar = (write_parquet(out.quarantine, quarantine_dir, QUARANTINE_KEYS, 1)
                  if out.quarantine is not None else 0)
        schemas = {"data": spark_schema_fingerprint(data)}
    finally:
        out.release()
        curated.unpersist()
    n_in = int(ingest.row_counts["curated"])
    if n_in != n_kept + n_dup + n_quar:
        raise DedupReconciliationError(
            f"{modality}: {n_in} curated input rows != {n_kept} kept + {n_dup} duplicates + "
            f"{n_quar} quarantined")
    # The figures scan the written tables several times: read them once.
    kept = read_parquet(spark, parquet_files(data_dir), data.schema).persist()
    duplicates = read_parquet(spark, parquet_files(dup_dir), out.duplicates.schema).persist()
    quarantine = read_stage_table(spark, ingest_stage, "quarantine/", QUARANTINE_SCHEMA)
    if n_quar:
        quarantine = quarantine.unionByName(
            read_parquet(spark, parquet_files(quarantine_dir), QUARANTINE_SCHEMA))
    try:
        figures = quality_figures(modality, kept, duplicates=duplicates,
                                  quarantine=quarantine,
                                  n_input=int(ingest.row_counts["input"]))
        gates = enforce_gates(figures, ctx.cfg.gates)  # raises, naming the failing figure
        by_rule = {r["rule"]: int(r["count"])
                   for r in duplicates.groupBy("rule").count().collect()}
        splits = {r["split"]: int(r["count"]) for r in kept.groupBy("split").count().collect()}
    finally:
        kept.unpersist()
        duplicates.unpersist()
    counts = {"input": n_in, "kept": n_kept, "duplicates": n_dup, "quarantined": n_quar}
    counts.update({f"duplicates.{rule}": n for rule, n in sorted(by_rule.items())})
    counts.update({f"split.{s}": n for s, n in sorted(splits.items())})
    rules = ", ".join(f"{r} {n}" for r, n in sorted(by_rule.items())) or "none"
    summary = (f"{n_in:,} rows -> {n_kept:,} kept + {n_dup:,} duplicates ({rules}) + "
               f"{n_quar:,} quarantined; split " +
               "/".join(f"{splits.get(s, 0):,}" for s in ("train", "val", "test")))
    log.info("dedup %s: %s", modality, summary)
    extra = {"quality": json_clean(figures), "gates": [g.to_dict() for g in gates]}
    return StageResult(row_counts=counts, schemas=schemas, extra=extra, summary=summary)


def _dedup_config(cfg: PipelineConfig) -> dict[str, Any]:
    return {"dedup": to_dict(cfg.dedup), "split": to_dict(cfg.split),
            "gates": to_dict(cfg.gates), "partitions": cfg.spark.shuffle_partitions}


def dedup_stage(modality: str) -> Stage:
    """The `dedup/<modality>` stage, reading the `ingest/<modality>` output."""
    modalities.get(modality)  # ValueError naming the known ones
    return Stage(
        name=f"dedup/{modality}",
        run=lambda ctx: run_dedup(ctx, modality),
        config_of=_dedup_config,
        inputs=(f"ingest/{modality}",),
        enabled=lambda cfg: modality in cfg.modalities,
        description=f"deduplicate, split and gate the curated {modality}",
        kind="spark",
        factory="pipeline.dedup.stage:dedup_stage",
        args=(modality,),
    )


def _run_report(ctx: StageContext) -> StageResult:
    from pipeline.dedup.report import collect_modality, write_dedup_report

    spark = ctx.spark
    entries: dict[str, Any] = {}
    for name, manifest in ctx.inputs.items():
        modality = name.split("/", 1)[1]
        report = modalities.get(modality).dedup_report
        stage = ctx.input(name)
        kept = read_stage_table(spark, stage, "data/")
        duplicates = read_stage_table(spark, stage, "duplicates/", DUPLICATES_SCHEMA)
        records = read_stage_table(spark, ctx.input(f"ingest/{modality}"), "curated/")
        entry = collect_modality(kept, duplicates, records, id_col=report.id_column,
                                 content_col=report.content_column,
                                 quarantined=int(manifest.row_counts["quarantined"]),
                                 n_input=int(manifest.row_counts["input"]),
                                 seed=ctx.cfg.dedup.seed, pair_rules=report.pair_rules,
                                 jaccard_n=ctx.cfg.dedup.shingle_n)
        entry["quality"] = manifest.extra.get("quality", {})
        entry["gates"] = manifest.extra.get("gates", [])
        entries[modality] = entry
    figures = {"run_id": ctx.run.run_id, "config": to_dict(ctx.cfg.dedup),
               "modalities": entries}
    write_dedup_report(figures, ctx.output / "dedup.html", ctx.output / "dedup.json")
    final = ctx.run.stage("reports/dedup") / "dedup.html"
    return StageResult(row_counts={f"{m}.kept": v["counts"]["kept"]
                                   for m, v in entries.items()},
                       extra={"report": final.url, "reports": ["dedup.html", "dedup.json"]},
                       summary=f"report: {final.url}")


def dedup_report_stage() -> Stage:
    """`reports/dedup`: the HTML + JSON report over the dedup output of every registered
    modality the run has (a disabled one is simply absent from the stage's inputs)."""
    return Stage(
        name="reports/dedup",
        run=_run_report,
        config_of=lambda cfg: {"seed": cfg.dedup.seed, "modalities": list(cfg.modalities)},
        inputs=tuple(f"dedup/{m}" for m in modalities.names()),
        description="render dedup.html and dedup.json",
        kind="spark",
        factory="pipeline.dedup.stage:dedup_report_stage",
    )
