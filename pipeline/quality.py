"""Data-quality figures per modality, and the gates that stop a run when they are bad.

`quality_figures` computes a plain, JSON-ready dict from Spark aggregations only (a handful
of one-row aggregates and small group-bys; nothing of corpus size reaches the driver):

    {"modality": str,
     "rows": {"input", "curated", "duplicates", "quarantined", "reconciles"},
     "completeness": {column: fraction of rows null or empty},
     "duplicate_rate": {"total": float, "by_rule": {rule: float}},       # of input rows
     "quarantine_rate": {"total": float, "by_reason": {reason: float}},  # of input rows
     "label_balance": {...},   # text/images: label counts; transactions: fraud counts/rate
     "value_ranges": {column: {"min", "max", "quantiles": {"p05".."p95"}}},
     "consistency": {...},     # modality-specific sanity figures, split fractions
     "metrics": {...}}         # optional, added by evaluation (accuracy, pr_auc, ...)

What is specific to a modality (its range columns, consistency figures, label balance)
comes from its spec's `QualitySpec` (pipeline.modalities). The gates that read these
figures are in pipeline.gates, which needs no Spark.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.jsonutil import json_clean
from pipeline.modalities import QualitySpec

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def _missing(field: T.StructField) -> Column:
    c = F.col(field.name)
    if isinstance(field.dataType, (T.StringType, T.BinaryType)):
        return c.isNull() | (F.length(c) == 0)
    return c.isNull()


def _count(df: DataFrame | None) -> int:
    return 0 if df is None else int(df.count())


def group_counts(df: DataFrame | None, col: str) -> dict[str, int]:
    if df is None or col not in df.columns:
        return {}
    rows = df.groupBy(col).count().collect()
    return {_key(r[col]): int(r["count"]) for r in rows}


def _key(value: Any) -> str:
    if value is None:
        return "<null>"
    if isinstance(value, bool):
        return "true" if value else "false"  # as Spark and JSON spell booleans
    return str(value)


def _ranges(df: DataFrame, columns: Iterable[str]) -> dict[str, Any]:
    cols = [c for c in columns if c in df.columns]
    if not cols:
        return {}
    aggs = []
    for c in cols:
        aggs += [F.min(c).alias(f"{c}__min"), F.max(c).alias(f"{c}__max"),
                 F.percentile_approx(F.col(c).cast("double"), list(QUANTILES), 10_000)
                 .alias(f"{c}__q")]
    r = df.agg(*aggs).first()
    assert r is not None
    out: dict[str, Any] = {}
    for c in cols:
        qs = r[f"{c}__q"] or [None] * len(QUANTILES)
        out[c] = {"min": json_clean(r[f"{c}__min"]), "max": json_clean(r[f"{c}__max"]),
                  "quantiles": {f"p{round(q * 100):02d}": json_clean(v)
                                for q, v in zip(QUANTILES, qs, strict=True)}}
    return out


def _rates(counts: Mapping[str, int], n: int, key: str) -> dict[str, Any]:
    return {"total": (sum(counts.values()) / n) if n else 0.0,
            key: {k: (v / n if n else 0.0) for k, v in sorted(counts.items())}}


def _consistency(spec: QualitySpec, df: DataFrame, n: int) -> dict[str, Any]:
    out: dict[str, Any] = dict(spec.consistency(df, n)) if spec.consistency else {}
    if "split" in df.columns:
        counts = group_counts(df, "split")
        out["split_fractions"] = {s: counts.get(s, 0) / n if n else 0.0
                                  for s in ("train", "val", "test")}
    if "cluster_id" in df.columns:
        out["clusters"] = int(df.select("cluster_id").distinct().count())
    return out


def quality_figures(modality: str, curated: DataFrame, *, duplicates: DataFrame | None = None,
                    quarantine: DataFrame | None = None,
                    n_input: int | None = None) -> dict[str, Any]:
    """Quality figures of one modality's curated (kept) rows and what was taken out.

    `quarantine` is every quarantined row of the modality (ingest and dedup together);
    `n_input` the number of raw records, defaulting to kept + duplicates + quarantined.
    For images, `n_bytes` ranges are computed from the `bytes` column when present.
    """
    from pipeline import modalities

    spec = modalities.get(modality).quality
    df = spec.prepare(curated) if spec.prepare is not None else curated
    n_kept, n_dup = _count(curated), _count(duplicates)
    reasons = group_counts(quarantine, "reason")
    n_quar = sum(reasons.values())
    n_in = int(n_input) if n_input is not None else n_kept + n_dup + n_quar
    figures: dict[str, Any] = {"modality": modality, "rows": {
        "input": n_in, "curated": n_kept, "duplicates": n_dup, "quarantined": n_quar,
        "reconciles": n_in == n_kept + n_dup + n_quar}}
    fields = [f for f in curated.schema.fields
              if not isinstance(f.dataType, (T.ArrayType, T.MapType, T.StructType))]
    if fields and n_kept:
        r = curated.agg(*[F.sum(F.when(_missing(f), 1).otherwise(0)).alias(f.name)
                          for f in fields]).first()
        assert r is not None
        figures["completeness"] = {f.name: int(r[f.name]) / n_kept for f in fields}
    else:
        figures["completeness"] = {f.name: 0.0 for f in fields}
    figures["duplicate_rate"] = _rates(group_counts(duplicates, "rule"), n_in, "by_rule")
    figures["quarantine_rate"] = _rates(reasons, n_in, "by_reason")
    figures["label_balance"] = (spec.label_balance(curated, n_kept) if spec.label_balance
                                else {"counts": group_counts(curated, "label")})
    figures["value_ranges"] = _ranges(df, spec.range_columns)
    figures["consistency"] = _consistency(spec, df, n_kept)
    return figures
