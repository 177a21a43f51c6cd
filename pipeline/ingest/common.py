"""Pieces every ingest module shares: the quarantine contract and deterministic writes.

The quarantine table has one schema for all modalities (DESIGN.md): `stage, source,
reason, detail, raw`. `raw` is truncated and has anything shaped like a card number
masked, so that no quarantine row can leak a PAN even when the row is garbage.

Spark names its output files with a random UUID; `write_parquet` hash-partitions by a
stable key, sorts within partitions and renames the files to `part-NNNNN.parquet`, so the
same input gives the same file names and the same bytes on every run.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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
    it read, counted independently of the split so the stage can prove they reconcile."""

    curated: DataFrame
    quarantine: DataFrame
    n_input: int


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
    `folder_url`; returns the number of rows written (from the Parquet footers).

    Rows go to a partition by a hash of `key_cols` (stable across runs, unlike range
    bounds sampled per job), then are sorted by `key_cols` within it.
    """
    keys = [F.col(c) for c in key_cols]
    (df.repartition(partitions, *keys).sortWithinPartitions(*keys)
       .write.mode("overwrite").option("compression", "zstd").parquet(folder_url))
    return _rename_parts(folder_url)


def _rename_parts(folder_url: str) -> int:
    import pyarrow.parquet as pq

    fs, folder = filesystem(folder_url)
    rows = 0
    for path in sorted(fs.find(folder)):
        name = posixpath.basename(path)
        if name.startswith(("_", ".")) or name.endswith(".crc"):
            fs.rm(path)  # _SUCCESS, .crc checksums: the manifest replaces them
            continue
        match = re.match(r"part-(\d+)-", name)
        if not match:
            continue
        target = posixpath.join(folder, f"part-{int(match.group(1)):05d}.parquet")
        fs.mv(path, target)
        with fs.open(target, "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    return rows


def reason_counts(quarantine: DataFrame) -> dict[str, int]:
    """Quarantined rows per reason code (a small aggregate, safe to collect)."""
    return {r["reason"]: int(r["count"]) for r in
            quarantine.groupBy("reason").count().orderBy("reason").collect()}


def check_reasons(modality: str, counts: Mapping[str, int]) -> None:
    unknown = sorted(set(counts) - set(REASONS[modality]))
    if unknown:
        raise ValueError(f"{modality} ingest produced unlisted reason codes {unknown}")


def spark_schema_fingerprint(df: DataFrame) -> str:
    """Fingerprint of a DataFrame's schema in Arrow terms (what Parquet readers see)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return schema_fingerprint(to_arrow_schema(df.schema))
