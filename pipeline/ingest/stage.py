"""The ingest stages: raw files -> curated Parquet + quarantine Parquet, one per modality.

One generic stage per registered modality (`pipeline.modalities`): the spec names the
ingest function, the curated sort keys, the closed list of reason codes and what else
belongs in the cache key. Each stage writes `curated/` and `quarantine/` into its output
folder, proves that every input record is accounted for (input = curated + quarantined, or
the stage fails), and returns row counts per outcome and per reason code for its manifest.

Raw inputs are the modality's configured `inputs.<modality>.paths`, on the store of
`storage.root` (same fsspec options), or else the synth stage's `<modality>/` folder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from fsspec import AbstractFileSystem

from pipeline import modalities
from pipeline.config import ConfigError, PipelineConfig, to_dict
from pipeline.ingest.listing import FileScan
from pipeline.modalities import IngestRequest
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import Location, digest_of, to_url

log = logging.getLogger(__name__)

QUARANTINE_KEYS = ("source", "reason")


class ReconciliationError(RuntimeError):
    """Input records != curated + quarantined: a record was lost or duplicated."""


def configured_inputs(cfg: PipelineConfig, modality: str) -> list[Location]:
    """The modality's configured raw input paths as Locations on the store of
    `storage.root` (its options reach them), glob patterns expanded
    (`pipeline.ingest.listing.expand_path`); empty when none are configured. A path that
    does not exist is a ConfigError naming it (raised while planning, before Spark)."""
    from pipeline.ingest.listing import InputPathError, expand_path

    root = cfg.storage.location
    found: list[Location] = []
    problems: list[str] = []
    for p in modalities.get(modality).input_config(cfg).paths:
        try:
            found += expand_path(root.at(to_url(p)))
        except InputPathError as exc:
            problems.append(f"inputs.{modality}.paths: {p!r}: {exc}")
    if problems:
        raise ConfigError(problems)
    return found


def raw_inputs(cfg: PipelineConfig, modality: str, synth: Location | None) -> list[Location]:
    """The raw inputs of a modality: its configured paths, else the synth stage's folder."""
    configured = configured_inputs(cfg, modality)
    if configured:
        return configured
    if synth is None:
        raise ValueError(f"no inputs.{modality}.paths configured and no sample data generated")
    return [synth / modality]


def _raw_files(inputs: Sequence[Location]) -> list[tuple[AbstractFileSystem, str]]:
    """(filesystem, path in it) of every file at or under `inputs` (symlinked folders
    followed, as ingest lists them), in listing order."""
    from pipeline.ingest.listing import walk_files

    out: list[tuple[AbstractFileSystem, str]] = []
    for loc in inputs:
        fs, root = loc.filesystem()
        paths = [root] if fs.isfile(root) else list(walk_files(fs, root))
        out += [(fs, p) for p in paths]
    return out


def raw_listing_digest(inputs: Sequence[Location]) -> str:
    """Digest of (path, size, modification time) of every file under `inputs`.

    Configured raw inputs have no manifest; this stands in for one in the cache key, so a
    changed, added or removed raw file re-runs ingest."""
    entries = []
    for fs, path in _raw_files(inputs):
        info = fs.info(path)
        entries.append([path, info.get("size"), str(info.get("mtime") or
                                                     info.get("LastModified") or "")])
    return digest_of(entries)


RAW_FILES_MAX = 1000  # raw files listed one by one (with sha256) in the ingest manifest
RAW_BYTES_MAX = 256 * 1024 * 1024  # ... and only when re-reading them for sha256 is cheap


def raw_file_records(inputs: Sequence[Location]) -> dict[str, Any]:
    """Lineage of configured raw inputs for the ingest manifest's `extra`: the listing
    digest and file count always; each file's URL, size and sha256 when there are at most
    RAW_FILES_MAX files of RAW_BYTES_MAX bytes in total (else the digest stands for them)."""
    from pipeline.storage import file_digest

    files = [(fs, path, int(fs.size(path))) for fs, path in _raw_files(inputs)]
    out: dict[str, Any] = {"raw_digest": raw_listing_digest(inputs),
                           "raw_file_count": len(files)}
    if len(files) <= RAW_FILES_MAX and sum(size for _, _, size in files) <= RAW_BYTES_MAX:
        out["raw_files"] = [{"url": fs.unstrip_protocol(p), "size": size,
                             "sha256": file_digest(fs, p)} for fs, p, size in files]
    return out


def _scan(cfg: PipelineConfig, modality: str, inputs: Sequence[Location]) -> FileScan:
    """The stage's listing of its inputs, with the modality's formats and the input
    section's include/exclude patterns."""
    from pipeline.ingest.listing import scan_inputs

    spec = modalities.get(modality)
    section = spec.input_config(cfg)
    scan = scan_inputs(inputs, spec.input_extensions, getattr(section, "include", ()),
                       getattr(section, "exclude", ()), spec.compressed_extensions)
    if spec.claim_files is not None and scan.unsupported:  # read by content after all
        claimed = {f.url for f in spec.claim_files(cfg, scan.unsupported)}
        scan.files = sorted(scan.files + [f for f in scan.unsupported if f.url in claimed],
                            key=lambda f: f.url)
        scan.unsupported = [f for f in scan.unsupported if f.url not in claimed]
    return scan


def unsupported_rows(spark: Any, modality: str, files: Sequence[Location]) -> Any:
    """One UNSUPPORTED_FILE quarantine row per file (a short list, built on the driver)."""
    from pipeline.ingest.common import QUARANTINE_SCHEMA, mask_cards_py

    spec = modalities.get(modality)
    formats = ", ".join(spec.input_extensions)
    rows = [("ingest", f.url, "UNSUPPORTED_FILE",
             f"{f.name!r} is no {modality} input format ({formats})",
             mask_cards_py(f.name)) for f in files]
    return spark.createDataFrame(rows, QUARANTINE_SCHEMA)


def _files_text(scan: FileScan) -> str:
    excluded = ", ".join(f"{rule} {len(urls)}" for rule, urls in sorted(scan.excluded.items()))
    return (f"files: {len(scan.files):,} read, {len(scan.unsupported):,} rejected, "
            f"{sum(len(u) for u in scan.excluded.values()):,} excluded"
            + (f" ({excluded})" if excluded else ""))


def run_ingest(ctx: StageContext, modality: str) -> StageResult:
    """Run one modality's ingest into the stage's output folder; see module docstring."""
    from pipeline.ingest.common import QUARANTINE_SCHEMA, check_reasons
    from pipeline.spark_io import (
        parquet_files,
        read_parquet,
        spark_schema_fingerprint,
        write_parquet,
    )

    spec = modalities.get(modality)
    spark = ctx.spark
    synth = ctx.input("synth") if "synth" in ctx.inputs else None
    inputs = raw_inputs(ctx.cfg, modality, synth)
    result = spec.ingest(IngestRequest(spark, ctx.cfg, inputs))
    scan = _scan(ctx.cfg, modality, inputs)
    if scan.unsupported:  # every file found is read, rejected here, or excluded by a rule
        result.quarantine = result.quarantine.unionByName(
            unsupported_rows(spark, modality, scan.unsupported))
        result.n_input += len(scan.unsupported)
    partitions = ctx.cfg.spark.shuffle_partitions
    curated_dir, quarantine_dir = ctx.output / "curated", ctx.output / "quarantine"
    # The two outputs share their parse; cache it so the raw files are parsed once.
    if result.shared is not None:
        result.shared.persist()
    try:
        n_curated = write_parquet(result.curated, curated_dir, spec.curated_keys, partitions)
        n_quarantined = write_parquet(result.quarantine, quarantine_dir, QUARANTINE_KEYS, 1)
        schemas = {"curated": spark_schema_fingerprint(result.curated),
                   "quarantine": spark_schema_fingerprint(result.quarantine)}
        figures = result.figures() if result.figures is not None else None
    finally:
        if result.shared is not None:
            result.shared.unpersist()
    written = read_parquet(spark, parquet_files(quarantine_dir), QUARANTINE_SCHEMA)
    by_reason = {r["reason"]: int(r["count"])
                 for r in written.groupBy("reason").count().collect()}
    check_reasons(modality, by_reason)
    if result.n_input != n_curated + n_quarantined:
        raise ReconciliationError(
            f"{modality}: {result.n_input} input records != {n_curated} curated + "
            f"{n_quarantined} quarantined")
    counts = {"input": result.n_input, "curated": n_curated, "quarantined": n_quarantined}
    counts.update({f"quarantined.{r}": n for r, n in sorted(by_reason.items())})
    counts.update(scan.figures())
    rate = n_quarantined / result.n_input if result.n_input else 0.0
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())) or "none"
    summary = (f"{result.n_input:,} records -> {n_curated:,} curated + {n_quarantined:,} "
               f"quarantined ({rate:.1%}: {reasons}); {_files_text(scan)}")
    log.info("ingest %s: %s", modality, summary)
    # Sample data is listed file by file in the synth manifest already; configured raw
    # inputs have no manifest, so record them here for `pipeline lineage`.
    configured = configured_inputs(ctx.cfg, modality)
    extra = raw_file_records(configured) if configured else {}
    extra["files"] = {"read": len(scan.files), "rejected": len(scan.unsupported),
                      "excluded": {rule: len(urls) for rule, urls in
                                   sorted(scan.excluded.items())}}
    if figures is not None:
        extra["figures"] = figures
    return StageResult(row_counts=counts, schemas=schemas, extra=extra, summary=summary)


def _config_of(modality: str) -> Callable[[PipelineConfig], Any]:
    def config_of(cfg: PipelineConfig) -> Any:
        spec = modalities.get(modality)
        section: dict[str, Any] = {"input": to_dict(spec.input_config(cfg)),
                                   "partitions": cfg.spark.shuffle_partitions}
        configured = configured_inputs(cfg, modality)
        if configured:
            section["raw_digest"] = raw_listing_digest(configured)
        section.update(spec.ingest_key_parts(cfg))
        return section

    return config_of


def ingest_stage(modality: str) -> Stage:
    """The `ingest/<modality>` stage, reading sample data when no inputs are configured."""
    modalities.get(modality)  # ValueError naming the known ones
    return Stage(
        name=f"ingest/{modality}",
        run=lambda ctx: run_ingest(ctx, modality),
        config_of=_config_of(modality),
        inputs=("synth",),
        enabled=lambda cfg: modality in cfg.modalities,
        description=f"validate and normalize raw {modality} into curated Parquet + quarantine",
        kind="spark",
        factory="pipeline.ingest.stage:ingest_stage",
        args=(modality,),
    )
