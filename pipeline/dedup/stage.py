"""The dedup stages: curated Parquet -> deduplicated, split Parquet + duplicates, per
modality, then one `reports/dedup` stage that renders `dedup.html` + `dedup.json`.

`dedup/<modality>` writes `data/` (kept rows with `cluster_id` and `split`: the training
input), `duplicates/` (which record was dropped for which, by which rule, how similar)
and `quarantine/` (transactions' LABEL_CONFLICT rows). It fails unless
ingest input = kept + duplicates + quarantined (ingest's and its own), and it enforces the
quality gates before anything is published.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipeline.config import PipelineConfig, to_dict
from pipeline.ingest.common import (
    QUARANTINE_SCHEMA,
    spark_schema_fingerprint,
    write_parquet,
)
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import join, published_files

log = logging.getLogger(__name__)

ID_COLS = {"text": "doc_id", "images": "image_id", "transactions": "txn_id"}
# What the report shows side by side for a matched pair.
CONTENT_COLS = {"text": "text", "images": "bytes", "transactions": "source"}


class DedupReconciliationError(RuntimeError):
    """Input != kept + duplicates + quarantined after dedup."""


@dataclass
class DedupOutput:
    kept: DataFrame
    duplicates: DataFrame
    quarantine: DataFrame
    release: Callable[[], None] = lambda: None


def read_stage_table(spark: SparkSession, stage_url: str, prefix: str,
                     options: Mapping[str, Any] | None = None) -> DataFrame:
    """The Parquet files a published stage lists under `prefix` (e.g. 'curated/');
    `options` are the fsspec storage options used to read the manifest."""
    files = published_files(stage_url, prefix=prefix, suffix=".parquet", options=options)
    if not files:
        raise ValueError(f"{stage_url} lists no Parquet files under {prefix}")
    return spark.read.parquet(*files)


def _read_optional(spark: SparkSession, stage_url: str, prefix: str,
                   options: Mapping[str, Any] | None = None) -> DataFrame:
    files = published_files(stage_url, prefix=prefix, suffix=".parquet", options=options)
    return spark.read.parquet(*files) if files else spark.createDataFrame([], QUARANTINE_SCHEMA)


def dedup_modality(spark: SparkSession, modality: str, curated: DataFrame,
                   cfg: PipelineConfig) -> DedupOutput:
    """Run the modality's dedup rules on its curated rows (no I/O besides Spark's)."""
    empty_quarantine = spark.createDataFrame([], QUARANTINE_SCHEMA)
    if modality == "text":
        from pipeline.dedup.exact import exact_dedup, remap_clusters
        from pipeline.dedup.lsh import text_near_dedup

        kept_exact, dup_exact = exact_dedup(curated, "doc_id", "content_hash")
        # The near-dup stage scans its input several times: keep the exact-dedup shuffle
        # from being recomputed for each scan.
        kept_exact = kept_exact.persist()
        near = text_near_dedup(spark, kept_exact, cfg.dedup)
        duplicates = remap_clusters(dup_exact, near.kept, "doc_id", later=near.duplicates
                                    ).unionByName(near.duplicates)

        def release() -> None:
            kept_exact.unpersist()

        return DedupOutput(near.kept, duplicates, empty_quarantine, release)
    if modality == "images":
        from pipeline.dedup.images import image_dedup

        result = image_dedup(spark, curated, cfg.dedup,
                             dhash_max_hamming=cfg.dedup.dhash_max_hamming)
        return DedupOutput(result.kept, result.duplicates, empty_quarantine, result.release)
    from pipeline.dedup.transactions import transaction_dedup

    txn = transaction_dedup(spark, curated, cfg.dedup)
    return DedupOutput(txn.kept, txn.duplicates, txn.quarantine)


def run_dedup(ctx: StageContext, modality: str) -> StageResult:
    """Dedup + split + quality gates of one modality into the stage's staging folder."""
    from pipeline.quality import enforce_gates, quality_figures
    from pipeline.split import assign_split

    spark = ctx.spark
    ingest_url = ctx.run.stage(f"ingest/{modality}")
    ingest = ctx.inputs[f"ingest/{modality}"]
    curated = read_stage_table(spark, ingest_url, "curated/", ctx.cfg.storage.options)
    out = dedup_modality(spark, modality, curated, ctx.cfg)
    data = assign_split(out.kept, "cluster_id", ctx.cfg.split)
    id_col = ID_COLS[modality]
    try:
        n_kept = write_parquet(data, join(ctx.staging_url, "data"), [id_col],
                               ctx.cfg.spark.shuffle_partitions)
        n_dup = write_parquet(out.duplicates, join(ctx.staging_url, "duplicates"),
                              ["dropped_id"], 1)
        n_quar = write_parquet(out.quarantine, join(ctx.staging_url, "quarantine"),
                               ["source", "reason"], 1)
        schemas = {"data": spark_schema_fingerprint(data)}
    finally:
        out.release()
    n_in = int(ingest.row_counts["curated"])
    if n_in != n_kept + n_dup + n_quar:
        raise DedupReconciliationError(
            f"{modality}: {n_in} curated input rows != {n_kept} kept + {n_dup} duplicates + "
            f"{n_quar} quarantined")
    kept = spark.read.parquet(join(ctx.staging_url, "data"))
    duplicates = spark.read.parquet(join(ctx.staging_url, "duplicates")) if n_dup else (
        out.duplicates.limit(0))
    quarantine = _read_optional(spark, ingest_url, "quarantine/", ctx.cfg.storage.options)
    if n_quar:
        quarantine = quarantine.unionByName(spark.read.parquet(join(ctx.staging_url,
                                                                    "quarantine")))
    figures = quality_figures(modality, kept, duplicates=duplicates, quarantine=quarantine,
                              n_input=int(ingest.row_counts["input"]))
    gates = enforce_gates(figures, ctx.cfg.gates)  # raises, naming the figure, on failure
    by_rule = {r["rule"]: int(r["count"]) for r in duplicates.groupBy("rule").count().collect()}
    splits = {r["split"]: int(r["count"]) for r in kept.groupBy("split").count().collect()}
    counts = {"input": n_in, "kept": n_kept, "duplicates": n_dup, "quarantined": n_quar}
    counts.update({f"duplicates.{rule}": n for rule, n in sorted(by_rule.items())})
    counts.update({f"split.{s}": n for s, n in sorted(splits.items())})
    rules = ", ".join(f"{r} {n}" for r, n in sorted(by_rule.items())) or "none"
    summary = (f"{n_in:,} rows -> {n_kept:,} kept + {n_dup:,} duplicates ({rules}) + "
               f"{n_quar:,} quarantined; split " +
               "/".join(f"{splits.get(s, 0):,}" for s in ("train", "val", "test")))
    log.info("dedup %s: %s", modality, summary)
    extra = {"quality": _jsonable(figures), "gates": [g.to_dict() for g in gates]}
    return StageResult(row_counts=counts, schemas=schemas, extra=extra, summary=summary)


def _jsonable(value: Any) -> Any:
    """Figures as plain JSON values (Decimals, datetimes and numpy scalars become str/float)."""
    import json

    return json.loads(json.dumps(value, default=lambda v: float(v) if hasattr(v, "__float__")
                                 else str(v)))


def dedup_stage(modality: str) -> Stage:
    """The `dedup/<modality>` stage, reading the `ingest/<modality>` output."""
    return Stage(
        name=f"dedup/{modality}",
        run=lambda ctx: run_dedup(ctx, modality),
        config_of=lambda cfg: {"dedup": to_dict(cfg.dedup), "split": to_dict(cfg.split),
                               "gates": to_dict(cfg.gates),
                               "partitions": cfg.spark.shuffle_partitions},
        inputs=(f"ingest/{modality}",),
        enabled=lambda cfg: modality in cfg.modalities,
        description=f"deduplicate, split and gate the curated {modality}",
        kind="spark",
    )


def _run_report(ctx: StageContext) -> StageResult:
    from pipeline.dedup.report import collect_modality, write_dedup_report

    spark = ctx.spark
    modalities: dict[str, Any] = {}
    for name, manifest in ctx.inputs.items():
        modality = name.split("/", 1)[1]
        stage_url = ctx.run.stage(name)
        options = ctx.cfg.storage.options
        kept = read_stage_table(spark, stage_url, "data/", options)
        dup_files = published_files(stage_url, prefix="duplicates/", suffix=".parquet",
                                    options=options)
        duplicates = spark.read.parquet(*dup_files) if dup_files else spark.createDataFrame(
            [], "dropped_id string, kept_id string, rule string, similarity double, "
                "cluster_id string")
        records = read_stage_table(spark, ctx.run.stage(f"ingest/{modality}"), "curated/",
                                   options)
        id_col = "source" if modality == "transactions" else ID_COLS[modality]
        entry = collect_modality(kept, duplicates, records, id_col=id_col,
                                 content_col=CONTENT_COLS[modality],
                                 quarantined=int(manifest.row_counts["quarantined"]),
                                 n_input=int(manifest.row_counts["input"]),
                                 seed=ctx.cfg.dedup.seed,
                                 pair_rules=None if modality == "transactions" else ("near_dup",))
        entry["quality"] = manifest.extra.get("quality", {})
        entry["gates"] = manifest.extra.get("gates", [])
        modalities[modality] = entry
    figures = {"run_id": ctx.run.run_id, "config": to_dict(ctx.cfg.dedup),
               "modalities": modalities}
    write_dedup_report(figures, join(ctx.staging_url, "dedup.html"),
                       join(ctx.staging_url, "dedup.json"), ctx.cfg.storage.options)
    final = join(ctx.run.stage("reports/dedup"), "dedup.html")
    return StageResult(row_counts={f"{m}.kept": v["counts"]["kept"]
                                   for m, v in modalities.items()},
                       summary=f"report: {final}")


def dedup_report_stage(modalities: tuple[str, ...]) -> Stage:
    """`reports/dedup`: the HTML + JSON report over every modality's dedup output."""
    return Stage(
        name="reports/dedup",
        run=_run_report,
        config_of=lambda cfg: {"seed": cfg.dedup.seed, "modalities": list(cfg.modalities)},
        inputs=tuple(f"dedup/{m}" for m in modalities),
        description="render dedup.html and dedup.json",
        kind="spark",
    )
