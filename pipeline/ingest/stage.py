"""The ingest stages: raw files -> curated Parquet + quarantine Parquet, one per modality.

Each stage writes `curated/` and `quarantine/` under its staging folder, proves that every
input record is accounted for (input = curated + quarantined, or the stage fails), and
returns row counts per outcome and per reason code for its manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.config import PipelineConfig, to_dict
from pipeline.ingest.common import IngestResult, check_reasons, spark_schema_fingerprint
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import digest_of, filesystem, join, to_url

log = logging.getLogger(__name__)

MODALITIES = ("text", "images", "transactions")
# Sort/partition keys of each curated table: stable ids first, so files are deterministic.
CURATED_KEYS = {"text": ["doc_id"], "images": ["image_id"], "transactions": ["txn_id", "source"]}
QUARANTINE_KEYS = ["source", "reason"]


class ReconciliationError(RuntimeError):
    """Input records != curated + quarantined: a record was lost or duplicated."""


def raw_inputs(cfg: PipelineConfig, modality: str, synth_url: str | None) -> list[str]:
    """The raw input URLs of a modality: configured paths, else the synth stage's folder."""
    paths = getattr(cfg.inputs, modality).paths
    if paths:
        return [to_url(p) for p in paths]
    if synth_url is None:
        raise ValueError(f"no inputs.{modality}.paths configured and no sample data generated")
    return [join(synth_url, modality)]


def raw_listing_digest(urls: Sequence[str]) -> str:
    """Digest of (path, size, modification time) of every file under `urls`.

    Configured raw inputs have no manifest; this stands in for one in the cache key, so a
    changed, added or removed raw file re-runs ingest."""
    entries = []
    for url in urls:
        fs, root = filesystem(url)
        paths = [root] if fs.isfile(root) else sorted(fs.find(root))
        for path in paths:
            info = fs.info(path)
            entries.append([path, info.get("size"), str(info.get("mtime") or
                                                         info.get("LastModified") or "")])
    return digest_of(entries)


RAW_FILES_MAX = 1000  # raw files listed one by one (with sha256) in the ingest manifest
RAW_BYTES_MAX = 256 * 1024 * 1024  # ... and only when re-reading them for sha256 is cheap


def raw_file_records(urls: Sequence[str]) -> dict[str, Any]:
    """Lineage of configured raw inputs for the ingest manifest's `extra`: the listing
    digest and file count always; each file's URL, size and sha256 when there are at most
    RAW_FILES_MAX files of RAW_BYTES_MAX bytes in total (else the digest stands for them)."""
    from pipeline.storage import file_digest

    files: list[tuple[Any, str, int]] = []
    for url in urls:
        fs, root = filesystem(url)
        paths = [root] if fs.isfile(root) else sorted(p for p in fs.find(root)
                                                      if not fs.isdir(p))
        files += [(fs, p, int(fs.size(p))) for p in paths]
    out: dict[str, Any] = {"raw_digest": raw_listing_digest(urls), "raw_file_count": len(files)}
    if len(files) <= RAW_FILES_MAX and sum(size for _, _, size in files) <= RAW_BYTES_MAX:
        out["raw_files"] = [{"url": fs.unstrip_protocol(p), "size": size,
                             "sha256": file_digest(fs, p)} for fs, p, size in files]
    return out


def hmac_key_id(key: bytes) -> str:
    """A non-secret fingerprint of the HMAC key: tokens change when the key does, so the key
    must be part of the cache key; this id is safe to store, the key is not."""
    return hmac.new(key, b"pipeline/hmac-key-id", hashlib.sha256).hexdigest()[:12]


def _ingest(ctx: StageContext, modality: str) -> IngestResult:
    spark = ctx.spark
    synth = ctx.run.stage("synth") if "synth" in ctx.inputs else None
    urls = raw_inputs(ctx.cfg, modality, synth)
    mcfg = getattr(ctx.cfg.inputs, modality)
    if modality == "text":
        from pipeline.ingest.text import ingest_text

        return ingest_text(spark, mcfg, urls)
    if modality == "images":
        from pipeline.ingest.images import ingest_images

        return ingest_images(spark, mcfg, urls)
    from pipeline.ingest.transactions import ingest_transactions, resolve_hmac_key

    master = spark.sparkContext.master or ""
    key = resolve_hmac_key(mcfg, local_mode=master.startswith("local"))
    return ingest_transactions(spark, mcfg, urls, key)


def run_ingest(ctx: StageContext, modality: str) -> StageResult:
    """Run one modality's ingest into the stage's staging folder; see module docstring."""
    from pipeline.ingest.common import write_parquet

    result = _ingest(ctx, modality)
    partitions = ctx.cfg.spark.shuffle_partitions
    curated_url = join(ctx.staging_url, "curated")
    quarantine_url = join(ctx.staging_url, "quarantine")
    # The two outputs share their parse; cache it so the raw files are parsed once.
    if result.shared is not None:
        result.shared.persist()
    try:
        n_curated = write_parquet(result.curated, curated_url, CURATED_KEYS[modality],
                                  partitions)
        n_quarantined = write_parquet(result.quarantine, quarantine_url, QUARANTINE_KEYS, 1)
        schemas = {"curated": spark_schema_fingerprint(result.curated),
                   "quarantine": spark_schema_fingerprint(result.quarantine)}
    finally:
        if result.shared is not None:
            result.shared.unpersist()
    by_reason = {r["reason"]: int(r["count"]) for r in
                 ctx.spark.read.parquet(quarantine_url).groupBy("reason").count().collect()}
    check_reasons(modality, by_reason)
    if result.n_input != n_curated + n_quarantined:
        raise ReconciliationError(
            f"{modality}: {result.n_input} input records != {n_curated} curated + "
            f"{n_quarantined} quarantined")
    counts = {"input": result.n_input, "curated": n_curated, "quarantined": n_quarantined}
    counts.update({f"quarantined.{r}": n for r, n in sorted(by_reason.items())})
    rate = n_quarantined / result.n_input if result.n_input else 0.0
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())) or "none"
    summary = (f"{result.n_input:,} records -> {n_curated:,} curated + {n_quarantined:,} "
               f"quarantined ({rate:.1%}: {reasons})")
    log.info("ingest %s: %s", modality, summary)
    # Sample data is listed file by file in the synth manifest already; configured raw
    # inputs have no manifest, so record them here for `pipeline lineage`.
    paths = getattr(ctx.cfg.inputs, modality).paths
    extra = raw_file_records([to_url(p) for p in paths]) if paths else {}
    return StageResult(row_counts=counts, schemas=schemas, extra=extra, summary=summary)


def _config_of(modality: str) -> Callable[[PipelineConfig], Any]:
    def config_of(cfg: PipelineConfig) -> Any:
        section: dict[str, Any] = {"input": to_dict(getattr(cfg.inputs, modality)),
                                   "partitions": cfg.spark.shuffle_partitions}
        paths = getattr(cfg.inputs, modality).paths
        if paths:
            section["raw_digest"] = raw_listing_digest([to_url(p) for p in paths])
        if modality == "transactions":
            from pipeline.ingest.transactions import resolve_hmac_key

            local = cfg.spark.master.startswith("local")
            section["hmac_key_id"] = hmac_key_id(resolve_hmac_key(cfg.inputs.transactions,
                                                                  local_mode=local))
        return section

    return config_of


def ingest_stage(modality: str) -> Stage:
    """The `ingest/<modality>` stage, reading sample data when no inputs are configured."""
    return Stage(
        name=f"ingest/{modality}",
        run=lambda ctx: run_ingest(ctx, modality),
        config_of=_config_of(modality),
        inputs=("synth",),
        enabled=lambda cfg: modality in cfg.modalities,
        description=f"validate and normalize raw {modality} into curated Parquet + quarantine",
        kind="spark",
    )
