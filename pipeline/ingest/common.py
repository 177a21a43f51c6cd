"""Pieces every ingest module shares: the quarantine contract and deterministic writes.

The quarantine table has one schema for all modalities (DESIGN.md): `stage, source,
reason, detail, raw`. `raw` is truncated and has anything shaped like a card number
masked, so that no quarantine row can leak a PAN even when the row is garbage.

`write_parquet` hash-partitions by a stable key, sorts within partitions and has each task
write its partition as `part-NNNNN.parquet` with pyarrow, so the same input gives the same
file names and the same bytes on every run.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pyarrow as pa
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.ingest.reasons import REASONS
from pipeline.storage import filesystem, schema_fingerprint

log = logging.getLogger(__name__)

RAW_MAX_CHARS = 512
# 12-19 digits, optionally grouped by single spaces or dashes: the shapes of a PAN.
CARD_PATTERN = r"(?<![0-9])[0-9](?:[ -]?[0-9]){11,18}(?![0-9])"
_CARD_RE = re.compile(CARD_PATTERN)
CARD_MASK = "[CARD]"

QUARANTINE_SCHEMA = T.StructType([
    T.StructField("stage", T.StringType(), False),
    T.StructField("source", T.StringType(), False),
    T.StructField("reason", T.StringType(), False),
    T.StructField("detail", T.StringType(), True),
    T.StructField("raw", T.StringType(), True),
])


@dataclass
class IngestResult:
    """What an ingest function returns: curated rows, quarantined rows, and how many records
    it read, counted independently of the split so the stage can prove they reconcile.

    `shared` is the parsed-and-checked frame both outputs are filtered from; the stage
    persists it so the raw files are read and parsed once for the two writes."""

    curated: DataFrame
    quarantine: DataFrame
    n_input: int
    shared: DataFrame | None = None


def mask_cards(raw: Column) -> Column:
    """Spark expression: `raw` with card-number-shaped digit runs replaced by [CARD]."""
    return F.regexp_replace(raw, CARD_PATTERN, CARD_MASK)


def mask_cards_py(text: str) -> str:
    """The same masking for Python strings (log lines, error details)."""
    return _CARD_RE.sub(CARD_MASK, text)


def quarantine_rows(df: DataFrame, stage: str, source: Column, reason: Column,
                    detail: Column, raw: Column) -> DataFrame:
    """Project `df` onto the quarantine schema, truncating and masking `raw`."""
    return df.select(
        F.lit(stage).alias("stage"),
        source.cast("string").alias("source"),
        reason.cast("string").alias("reason"),
        detail.cast("string").alias("detail"),
        F.substring(mask_cards(raw.cast("string")), 1, RAW_MAX_CHARS).alias("raw"),
    )


def empty_quarantine(df: DataFrame) -> DataFrame:
    return df.sparkSession.createDataFrame([], QUARANTINE_SCHEMA)


def source_with_line(path: Column, line: Column) -> Column:
    """`file:///x/part-000.jsonl:17`: the raw file URI plus a 1-based line/row number."""
    return F.concat(path, F.lit(":"), line.cast("string"))


def write_parquet(df: DataFrame, folder_url: str, key_cols: Sequence[str],
                  partitions: int) -> int:
    """Write `df` deterministically as zstd Parquet files `part-NNNNN.parquet` under
    `folder_url`; returns the number of rows written.

    Rows go to a partition by a hash of `key_cols` (stable across runs, unlike range
    bounds sampled per job) and are sorted by `key_cols` within it. Each task then writes
    its partition with pyarrow, in the executor: Spark's own Parquet writer lists column
    encodings in the footer in a different order on every JVM run, so its files are never
    byte-identical. A retried task rewrites the same name with the same bytes.
    """
    schema = arrow_schema(df)
    fs_url = folder_url.rstrip("/")
    keys = [F.col(c) for c in key_cols]
    ordered = df.repartition(partitions, *keys).sortWithinPartitions(*keys)

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        fs, folder = filesystem(fs_url)
        path = posixpath.join(folder, f"part-{part:05d}.parquet")
        rows = 0
        writer: pq.ParquetWriter | None = None
        handle = None
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    fs.makedirs(folder, exist_ok=True)
                    handle = fs.open(path, "wb")
                    writer = pq.ParquetWriter(handle, schema, compression="zstd")
                writer.write_batch(_conform(batch, schema))
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
            if handle is not None:
                handle.close()
        yield pa.RecordBatch.from_pydict({"rows": [rows]}, schema=_WRITE_STATS)

    stats = ordered.mapInArrow(write_partition, "rows long").collect()
    return int(sum(r["rows"] for r in stats))


_WRITE_STATS = pa.schema([("rows", pa.int64())])


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to the target schema (Spark may hand over large_string/large_binary)."""
    if batch.schema.equals(schema):
        return batch
    return pa.RecordBatch.from_arrays(
        [batch.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


def reason_counts(quarantine: DataFrame) -> dict[str, int]:
    """Quarantined rows per reason code (a small aggregate, safe to collect)."""
    return {r["reason"]: int(r["count"]) for r in
            quarantine.groupBy("reason").count().orderBy("reason").collect()}


def check_reasons(modality: str, counts: Mapping[str, int]) -> None:
    unknown = sorted(set(counts) - set(REASONS[modality]))
    if unknown:
        raise ValueError(f"{modality} ingest produced unlisted reason codes {unknown}")


def arrow_schema(df: DataFrame) -> pa.Schema:
    """The Arrow schema of a DataFrame as our Parquet files store it (timestamps in UTC)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(df.schema, timezone="UTC")


def spark_schema_fingerprint(df: DataFrame) -> str:
    """Fingerprint of a DataFrame's schema in Arrow terms (what Parquet readers see)."""
    return schema_fingerprint(arrow_schema(df))
