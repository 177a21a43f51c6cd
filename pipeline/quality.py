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

`check_gates` compares figures with `GatesConfig` and returns the failures; `enforce_gates`
raises `QualityGateError` naming each failing figure, its value and its threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import GatesConfig

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
RANGE_COLUMNS = {"text": ("n_chars",), "images": ("width", "height", "n_bytes"),
                 "transactions": ("amount", "velocity_1h", "velocity_24h")}
# File extensions each detected image format may legitimately carry.
_EXTENSIONS = {"JPEG": ("jpg", "jpeg", "jpe", "jfif"), "PNG": ("png",), "GIF": ("gif",),
               "BMP": ("bmp", "dib"), "WEBP": ("webp",), "TIFF": ("tif", "tiff")}


def _missing(field: T.StructField) -> Column:
    c = F.col(field.name)
    if isinstance(field.dataType, (T.StringType, T.BinaryType)):
        return c.isNull() | (F.length(c) == 0)
    return c.isNull()


def _count(df: DataFrame | None) -> int:
    return 0 if df is None else int(df.count())


def _group_counts(df: DataFrame | None, col: str) -> dict[str, int]:
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


def _plain(value: Any) -> Any:
    """Spark's Decimal/datetime values as JSON-ready floats/ISO strings."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return float(value)


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
        out[c] = {"min": _plain(r[f"{c}__min"]), "max": _plain(r[f"{c}__max"]),
                  "quantiles": {f"p{round(q * 100):02d}": _plain(v)
                                for q, v in zip(QUANTILES, qs, strict=True)}}
    return out


def _rates(counts: Mapping[str, int], n: int, key: str) -> dict[str, Any]:
    return {"total": (sum(counts.values()) / n) if n else 0.0,
            key: {k: (v / n if n else 0.0) for k, v in sorted(counts.items())}}


def _consistency(modality: str, df: DataFrame, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    frac = (lambda v: (int(v or 0) / n) if n else 0.0)  # noqa: E731
    if modality == "text" and {"text", "n_chars"} <= set(df.columns):
        r = df.agg(F.sum(F.when(F.char_length("text") != F.col("n_chars"), 1)).alias("bad"))
        out["n_chars_mismatch"] = frac(r.first()["bad"])  # type: ignore[index]
    if modality == "images" and {"format", "source"} <= set(df.columns):
        ext = F.lower(F.regexp_extract("source", r"\.([A-Za-z0-9]+)(?::\d+)?$", 1))
        ok = F.lit(False)
        for fmt, exts in _EXTENSIONS.items():
            ok = ok | ((F.col("format") == fmt) & ext.isin(*exts))
        r = df.agg(F.sum(F.when(~ok, 1)).alias("lie"),
                   F.sum(F.when((F.col("width") <= 0) | (F.col("height") <= 0), 1)).alias("bad"))
        first = r.first()
        assert first is not None
        out["extension_mismatch"] = frac(first["lie"])  # detected format vs file name
        out["non_positive_size"] = frac(first["bad"])
        out["formats"] = _group_counts(df, "format")
        out["channels"] = _group_counts(df, "channels")
    if modality == "transactions" and "amount" in df.columns:
        r = df.agg(F.sum(F.when(F.col("amount") <= 0, 1)).alias("bad"),
                   F.min("ts").alias("ts_min"), F.max("ts").alias("ts_max"))
        first = r.first()
        assert first is not None
        out["non_positive_amount"] = frac(first["bad"])
        out["ts_range"] = [_plain(first["ts_min"]), _plain(first["ts_max"])]
        out["currencies"] = _group_counts(df, "currency")
        if "is_probable_retry" in df.columns:
            out["probable_retry_rate"] = frac(
                df.agg(F.sum(F.col("is_probable_retry").cast("int"))).first()[0])  # type: ignore[index]
    if "split" in df.columns:
        counts = _group_counts(df, "split")
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
    df = curated
    if modality == "images" and "bytes" in df.columns and "n_bytes" not in df.columns:
        df = df.withColumn("n_bytes", F.length("bytes"))
    n_kept, n_dup = _count(curated), _count(duplicates)
    reasons = _group_counts(quarantine, "reason")
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
    figures["duplicate_rate"] = _rates(_group_counts(duplicates, "rule"), n_in, "by_rule")
    figures["quarantine_rate"] = _rates(reasons, n_in, "by_reason")
    if modality == "transactions" and "is_fraud" in curated.columns:
        labels = _group_counts(curated, "is_fraud")
        fraud = labels.get("true", 0)
        figures["label_balance"] = {"counts": labels,
                                    "fraud_rate": fraud / n_kept if n_kept else 0.0}
    else:
        figures["label_balance"] = {"counts": _group_counts(curated, "label")}
    figures["value_ranges"] = _ranges(df, RANGE_COLUMNS.get(modality, ()))
    figures["consistency"] = _consistency(modality, df, n_kept)
    return figures


# ---------------------------------------------------------------------------------------
# Gates


@dataclass(frozen=True)
class GateResult:
    """One gate checked against one modality's figures."""

    gate: str
    modality: str
    figure: str  # human name of the figure, e.g. "quarantine rate"
    value: float
    threshold: float
    op: str  # the comparison that passes: "<=" or ">="
    passed: bool

    @property
    def message(self) -> str:
        places = _places(self.value, self.threshold)
        value, threshold = f"{self.value:.{places}f}", f"{self.threshold:.{places}f}"
        if self.passed:
            return (f"gate {self.gate} passed for {self.modality}: {self.figure} {value} "
                    f"{self.op} {threshold}")
        bad_op = ">" if self.op == "<=" else "<"
        return (f"gate {self.gate} failed for {self.modality}: {self.figure} {value} "
                f"{bad_op} {threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "message": self.message}


# A failure is a GateResult with passed=False; the alias names what check_gates returns.
GateFailure = GateResult


class QualityGateError(RuntimeError):
    """One or more quality gates failed; the message lists each, with value and threshold."""

    def __init__(self, failures: list[GateResult]) -> None:
        self.failures = failures
        super().__init__("; ".join(f.message for f in failures))


def _places(value: float, threshold: float) -> int:
    """Fewest decimals (2..6) that show the threshold as configured and at which the value
    and the threshold read differently."""
    exact = next((p for p in range(2, 7) if round(threshold, p) == threshold), 6)
    for places in range(exact, 7):
        if round(value, places) != round(threshold, places):
            return places
    return exact


def _by_modality(figures: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if "modality" in figures:
        return [figures]
    return [f for f in figures.values() if isinstance(f, Mapping) and "modality" in f]


# (gate field, modality or None for all, path into figures, human name, op)
_GATES: tuple[tuple[str, str | None, tuple[str, ...], str, str], ...] = (
    ("max_quarantine_rate", None, ("quarantine_rate", "total"), "quarantine rate", "<="),
    ("max_duplicate_rate", None, ("duplicate_rate", "total"), "duplicate rate", "<="),
    ("min_image_accuracy", "images", ("metrics", "accuracy"), "accuracy", ">="),
    ("min_fraud_pr_auc", "transactions", ("metrics", "pr_auc"), "PR-AUC", ">="),
    ("max_text_bits_per_byte", "text", ("metrics", "bits_per_byte"), "bits per byte", "<="),
    ("max_text_perplexity", "text", ("metrics", "perplexity"), "perplexity", "<="),
    ("min_fraud_roc_auc", "transactions", ("metrics", "roc_auc"), "ROC-AUC", ">="),
    ("min_image_macro_f1", "images", ("metrics", "macro_f1"), "macro-F1", ">="),
)


def evaluate_gates(figures: Mapping[str, Any], gates: GatesConfig) -> list[GateResult]:
    """Every applicable gate's result, for one modality's figures or a {modality: figures}
    mapping. Gates whose figure is absent (e.g. metrics before evaluation) are skipped."""
    results = []
    for fig in _by_modality(figures):
        modality = str(fig["modality"])
        for gate, only, path, name, op in _GATES:
            if only is not None and only != modality:
                continue
            value: Any = fig
            for key in path:
                value = value.get(key) if isinstance(value, Mapping) else None
            configured = getattr(gates, gate)
            if value is None or configured is None:  # optional gates are None when off
                continue
            threshold = float(configured)
            passed = float(value) <= threshold if op == "<=" else float(value) >= threshold
            results.append(GateResult(gate, modality, name, float(value), threshold, op, passed))
    return results


def check_gates(figures: Mapping[str, Any], gates: GatesConfig) -> list[GateFailure]:
    """The failing gates (empty when all pass)."""
    return [r for r in evaluate_gates(figures, gates) if not r.passed]


def enforce_gates(figures: Mapping[str, Any], gates: GatesConfig) -> list[GateResult]:
    """Raise `QualityGateError` if any gate fails; otherwise return every gate's result."""
    results = evaluate_gates(figures, gates)
    failures = [r for r in results if not r.passed]
    if failures:
        raise QualityGateError(failures)
    return results

