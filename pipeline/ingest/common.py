"""Pieces every ingest module shares: the ingest result and the quarantine contract.

The quarantine table has one schema for all modalities (DESIGN.md): `stage, source,
reason, detail, raw`. `raw` is truncated and has anything shaped like a card number
masked, so that no quarantine row can leak a PAN even when the row is garbage.

Reading and writing files from Spark (`read_files`, `read_parquet`, `write_parquet`) is
in `pipeline.spark_io`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

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
    # Extra figures for the stage's manifest, computed after the writes while `shared`
    # is still cached (e.g. text's files per encoding).
    figures: Callable[[], dict[str, Any]] | None = None


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


def one_json_value(line: Column) -> Column:
    """Spark expression: the VARIANT of `line` when the line is exactly one strict JSON
    value (whitespace around it allowed); null otherwise.

    Spark's JSON parsers stop after the first value and ignore the rest: `{"a": 1} xyz`
    parses, and so does `[` + `{"a": 1}] xyz` + `]`, where the line closes a wrapping
    array early. So the line is parsed as `[<line>,"<n+1 '~'>"]`, n being the line's
    length: the array must hold exactly two values, the second a string of n+1 characters.
    Nothing inside the line can supply that string (a string in the line decodes to fewer
    characters than the line has), and the comma after the line keeps a trailing quote or
    backslash from reaching into the sentinel. Strict means Spark's `parse_json`: no
    duplicate keys, NaN/Infinity, single quotes, comments, raw control characters or lone
    surrogates; numbers of at most 1000 digits; nesting of at most 1000 levels."""
    n = F.length(line)
    doc = F.try_parse_json(F.concat(F.lit("["), line, F.lit(',"'),
                                    F.repeat(F.lit("~"), n + 1), F.lit('"]')))
    whole = ((F.array_size(doc.try_cast("array<variant>")) == 2)
             & (F.length(F.try_variant_get(doc, "$[1]", "string")) == n + 1))
    return F.when(F.coalesce(whole, F.lit(False)), F.try_variant_get(doc, "$[0]", "variant"))


def source_with_line(path: Column, line: Column) -> Column:
    """`file:///x/part-000.jsonl:17`: the raw file URI plus a 1-based line/row number."""
    return F.concat(path, F.lit(":"), line.cast("string"))


def reason_counts(quarantine: DataFrame) -> dict[str, int]:
    """Quarantined rows per reason code (a small aggregate, safe to collect)."""
    return {r["reason"]: int(r["count"]) for r in
            quarantine.groupBy("reason").count().orderBy("reason").collect()}


def check_reasons(modality: str, counts: Mapping[str, int]) -> None:
    """Raise ValueError when `counts` has a reason code outside the modality's closed list
    (its spec's `reasons`)."""
    from pipeline import modalities

    unknown = sorted(set(counts) - set(modalities.get(modality).reasons))
    if unknown:
        raise ValueError(f"{modality} ingest produced unlisted reason codes {unknown}")
