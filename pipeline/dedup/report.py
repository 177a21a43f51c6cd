"""The dedup report: `dedup.html` (self-contained, inline SVG) and `dedup.json`.

The report is rendered from a small dict the caller assembles from Spark aggregates and
seeded samples (never a corpus-sized collect). Its shape:

    {"run_id": str | None,
     "config": to_dict(cfg.dedup),            # bands, rows, jaccard_threshold, shingle_n, ...
     "modalities": {modality: {
        "counts": {"input": int, "kept": int, "quarantined": int,
                   "duplicates": {rule: int}},               # e.g. duplicates.groupBy("rule")
        "cluster_sizes": {size: n_clusters},                 # `cluster_size_histogram`
        "pairs": [{"dropped_id", "kept_id", "rule", "similarity",
                   "dropped": text or bytes, "kept": text or bytes}],  # `sample_pairs`, <= ~50
        "quality": quality_figures(...),                     # pipeline.quality
        "gates": [GateResult.to_dict(), ...]}}}              # pipeline.quality.evaluate_gates

Sampled text near-duplicate pairs carry `jaccard`, their exact shingle Jaccard (n =
config shingle_n, the definition of `pipeline.textnorm` and of dedup's verification),
computed on the executors over the FULL texts of the sampled pairs only (an Arrow UDF in
`sample_pairs`), before the texts are cut to excerpts for display; the share of sampled
near-duplicate pairs at or above the threshold is an estimate of the precision of the
text near-dup rule. (Jaccard of the excerpts would be far off: two long documents that
differ in their first paragraphs share few shingles in their first 600 characters.)
Image pairs are shown as thumbnails (data: URIs). `dedup.json` holds the same figures
with image bytes replaced by their size and sha256 and texts cut to `EXCERPT_CHARS`, so it
stays small and JSON-clean.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline import html as H
from pipeline.storage import Location

EXCERPT_CHARS = 600
#: the duplicates rule whose sampled pairs get their exact Jaccard (text MinHash-LSH)
NEAR_DUP_RULE = "near_dup"


def cluster_size_histogram(kept: DataFrame, duplicates: DataFrame,
                           cluster_col: str = "cluster_id") -> dict[int, int]:
    """{cluster size: number of clusters}, counting kept and dropped members (aggregate)."""
    members = kept.select(cluster_col).unionByName(duplicates.select(cluster_col))
    sizes = members.groupBy(cluster_col).count().groupBy("count").agg(F.count("*").alias("n"))
    return {int(r["count"]): int(r["n"]) for r in sizes.collect()}


def exact_jaccard(texts_a: pa.Array, texts_b: pa.Array, n: int) -> np.ndarray:
    """Exact word-`n`-shingle Jaccard of the pairs (texts_a[i], texts_b[i]), vectorized:
    the shingle hashes and set intersection of dedup's verification (`pipeline.dedup.
    minhash`), equal to `pipeline.textnorm.jaccard` of `word_shingles` (up to 64-bit hash
    collisions). Nulls count as empty texts."""
    from pipeline.dedup.minhash import set_jaccard, shingle_hashes

    ha, oa = shingle_hashes(texts_a, n)
    hb, ob = shingle_hashes(texts_b, n)
    return set_jaccard(ha, oa, hb, ob)


def _jaccard_udf(n: int) -> Any:
    def jaccard_of(a: pa.Array, b: pa.Array) -> pa.Array:
        return pa.array(exact_jaccard(a, b, n), type=pa.float64())

    # Scalar Arrow UDF, from the type hints (the stubs insist on a functionType).
    return F.arrow_udf(jaccard_of, T.DoubleType())  # type: ignore[call-overload]


def sample_pairs(duplicates: DataFrame, records: DataFrame, id_col: str, content_col: str,
                 n: int = 20, seed: int = 0, rules: Sequence[str] | None = None,
                 max_chars: int | None = EXCERPT_CHARS,
                 jaccard_n: int | None = None) -> list[dict[str, Any]]:
    """A seeded sample of `n` duplicate pairs with both members' content, for the report.

    `records` must hold every input row (dropped rows are not in the kept table). The
    sample is the `n` smallest xxhash64(dropped_id, seed), a top-n without a full sort; the
    content is fetched with a broadcast join of those `n` rows. With `jaccard_n` and string
    content, each `NEAR_DUP_RULE` pair gets `jaccard`: the exact `jaccard_n`-shingle
    Jaccard of the two full texts, computed on the executors (`exact_jaccard`, Arrow).
    String content is then cut to `max_chars` characters on the executors, so only
    excerpts reach the driver.
    """
    dups = duplicates if rules is None else duplicates.where(F.col("rule").isin(*rules))
    picked = dups.orderBy(F.xxhash64("dropped_id", F.lit(seed)), "dropped_id").limit(n)
    is_text = dict(records.dtypes)[content_col] == "string"
    lookup = records.select(F.col(id_col).cast("string").alias("_id"),
                            F.col(content_col).alias("_c"))
    joined = (F.broadcast(picked)
              .join(lookup.withColumnRenamed("_c", "dropped"),
                    F.col("dropped_id") == F.col("_id")).drop("_id")
              .join(lookup.withColumnRenamed("_c", "kept"), F.col("kept_id") == F.col("_id"))
              .drop("_id"))
    if jaccard_n is not None and is_text:
        joined = joined.withColumn("jaccard", F.when(
            F.col("rule") == NEAR_DUP_RULE,
            _jaccard_udf(jaccard_n)(F.col("dropped"), F.col("kept"))))
    if max_chars is not None and is_text:
        joined = (joined.withColumn("dropped", F.substring("dropped", 1, max_chars))
                        .withColumn("kept", F.substring("kept", 1, max_chars)))
    out = [r.asDict() for r in joined.collect()]
    for r in out:
        if r.get("jaccard", 0) is None:
            del r["jaccard"]  # not a near-duplicate pair
    for r in out:
        if isinstance(r.get("dropped"), bytearray):
            r["dropped"], r["kept"] = bytes(r["dropped"]), bytes(r["kept"])
    return sorted(out, key=lambda r: str(r["dropped_id"]))


def collect_modality(kept: DataFrame, duplicates: DataFrame, records: DataFrame, *,
                     id_col: str, content_col: str, quarantined: int = 0,
                     n_input: int | None = None, n_pairs: int = 20, seed: int = 0,
                     pair_rules: Sequence[str] | None = ("near_dup",),
                     jaccard_n: int | None = None) -> dict[str, Any]:
    """One modality's report entry (counts, cluster sizes, sampled pairs) from its tables.

    `records` is the dedup input (every row, for the dropped members' content);
    `jaccard_n` the shingle size for the sampled near-duplicate pairs' exact Jaccard (see
    `sample_pairs`). Everything is an aggregate or a top-n sample; add "quality" and
    "gates" to the result yourself.
    """
    by_rule = {str(r["rule"]): int(r["count"])
               for r in duplicates.groupBy("rule").count().collect()}
    n_kept = int(kept.count())
    total = n_kept + sum(by_rule.values()) + quarantined
    return {
        "counts": {"input": total if n_input is None else int(n_input), "kept": n_kept,
                   "quarantined": int(quarantined), "duplicates": dict(sorted(by_rule.items()))},
        "cluster_sizes": cluster_size_histogram(kept, duplicates),
        "pairs": sample_pairs(duplicates, records, id_col, content_col, n=n_pairs, seed=seed,
                              rules=pair_rules, jaccard_n=jaccard_n),
    }


def scurve(bands: int, rows: int, points: int = 101) -> tuple[list[float], list[float]]:
    """P(candidate) = 1 - (1 - j^r)^b for j in [0, 1]: the LSH S-curve."""
    xs = [i / (points - 1) for i in range(points)]
    return xs, [1.0 - (1.0 - x**rows) ** bands for x in xs]


def _excerpted(value: Any) -> Any:
    """A display copy of sampled pairs: bytes as size and digest, long text cut short."""
    if isinstance(value, (bytes, bytearray)):
        return {"n_bytes": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, str):
        return value if len(value) <= EXCERPT_CHARS else value[:EXCERPT_CHARS] + "…"
    if isinstance(value, Mapping):
        return {str(k): _excerpted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_excerpted(v) for v in value]
    return value


def prepare(figures: Mapping[str, Any]) -> dict[str, Any]:
    """Figures completed with derived values (precision estimate from the sampled pairs'
    full-text `jaccard`, S-curve parameters); still holding raw bytes for thumbnails.
    Pairs without `jaccard` (images, transactions) count for no estimate: the excerpts
    held here are too short to judge."""
    cfg = dict(figures.get("config", {}))
    threshold = float(cfg.get("jaccard_threshold", 0.8))
    mods: dict[str, Any] = {}
    for name, mod in figures.get("modalities", {}).items():
        m = dict(mod)
        m["pairs"] = [dict(p) for p in m.get("pairs", [])]
        judged = [float(p["jaccard"]) for p in m["pairs"] if p.get("rule") == NEAR_DUP_RULE
                  and p.get("jaccard") is not None]
        if judged:
            m["precision_estimate"] = {"pairs": len(judged), "threshold": threshold,
                                       "precision": sum(j >= threshold for j in judged)
                                       / len(judged)}
        mods[name] = m
    out = {**figures, "config": cfg, "modalities": mods}
    if "bands" in cfg and "rows" in cfg:
        b, r = int(cfg["bands"]), int(cfg["rows"])
        out["lsh"] = {"bands": b, "rows": r, "threshold": threshold,
                      "p_candidate_at_threshold": 1 - (1 - threshold**r) ** b,
                      "scurve_midpoint": (1 / b) ** (1 / r)}
    return out


def _pair_table(name: str, pairs: list[dict[str, Any]]) -> H.Html:
    rows = []
    for p in pairs:
        a, b = p.get("dropped"), p.get("kept")
        if isinstance(a, (bytes, bytearray)) and isinstance(b, (bytes, bytearray)):
            a_cell: Any = H.thumbnail(bytes(a), str(p["dropped_id"]))
            b_cell: Any = H.thumbnail(bytes(b), str(p["kept_id"]))
        else:
            a_cell, b_cell = a, b
        row = {"rule": p.get("rule"), "similarity": p.get("similarity"),
               "dropped": H.Html(f"<b>{H.esc(p['dropped_id'])}</b><br>{H.esc(a_cell)}"),
               "kept": H.Html(f"<b>{H.esc(p['kept_id'])}</b><br>{H.esc(b_cell)}")}
        if "jaccard" in p:
            row["exact Jaccard"] = p["jaccard"]
        rows.append(row)
    if not rows:
        return H.paragraph("no duplicate pairs sampled", "muted")
    return H.table(rows, caption=f"{name}: sampled pairs (dropped vs kept)", css_class="pair")


def _gates_table(gates: list[Mapping[str, Any]]) -> H.Html:
    rows = [{"gate": g.get("gate"), "figure": g.get("figure"), "value": g.get("value"),
             "threshold": g.get("threshold"),
             "result": H.Html('<span class="pass">pass</span>' if g.get("passed")
                              else '<span class="fail">FAIL</span>'),
             "message": g.get("message")} for g in gates]
    return H.table(rows) if rows else H.paragraph("no gates apply", "muted")


def render_dedup_html(prepared: Mapping[str, Any]) -> str:
    """The report page from `prepare(figures)`."""
    mods: Mapping[str, Any] = prepared.get("modalities", {})
    summary = []
    for name, m in mods.items():
        c = m.get("counts", {})
        dups = c.get("duplicates", {})
        summary.append({"modality": name, "input": c.get("input"), "kept": c.get("kept"),
                        "duplicates": sum(dups.values()), "quarantined": c.get("quarantined"),
                        **{f"rule {k}": v for k, v in sorted(dups.items())}})
    parts: list[Any] = [H.section("Summary", H.table(summary) if summary else "no modalities")]
    lsh = prepared.get("lsh")
    if lsh:
        xs, ys = scurve(lsh["bands"], lsh["rows"])
        parts.append(H.section(
            "Text LSH candidate probability",
            H.line_chart({f"b={lsh['bands']}, r={lsh['rows']}": (xs, ys)},
                         title="S-curve 1 - (1 - j^r)^b", x_label="Jaccard similarity j",
                         y_label="P(candidate)", y_range=(0.0, 1.0),
                         vlines=[(lsh["threshold"], f"threshold {lsh['threshold']:g}")]),
            H.key_values(lsh)))
    for name, m in mods.items():
        body: list[Any] = []
        dups = m.get("counts", {}).get("duplicates", {})
        if dups:
            body.append(H.bar_chart(list(dups), list(dups.values()),
                                    title=f"{name}: duplicates per rule", y_label="rows"))
        sizes = {int(k): int(v) for k, v in m.get("cluster_sizes", {}).items()}
        if sizes:
            keys = sorted(sizes)
            body.append(H.bar_chart([str(k) for k in keys], [sizes[k] for k in keys],
                                    title=f"{name}: cluster sizes", x_label="members",
                                    y_label="clusters"))
        if "precision_estimate" in m:
            pe = m["precision_estimate"]
            body.append(H.paragraph(
                f"Estimated precision of near-duplicate matches: {pe['precision']:.3f} "
                f"({pe['pairs']} sampled pairs with exact Jaccard >= {pe['threshold']:g})."))
        body.append(_pair_table(name, list(m.get("pairs", []))))
        q = m.get("quality")
        if q:
            body.append(H.key_values(q.get("rows", {}), "rows"))
            for key in ("duplicate_rate", "quarantine_rate"):
                flat = {"total": q.get(key, {}).get("total"),
                        **next((v for k, v in q.get(key, {}).items() if k != "total"), {})}
                body.append(H.key_values(flat, key.replace("_", " ")))
            body.append(H.key_values({k: v for k, v in q.get("completeness", {}).items()},
                                     "missing fraction per column"))
        if "gates" in m:
            body.append(_gates_table(list(m["gates"])))
        parts.append(H.section(f"{name}", *body))
    title = "Dedup report" + (f" — run {prepared['run_id']}" if prepared.get("run_id") else "")
    return H.page(title, *parts, subtitle="counts, clusters, sampled pairs, quality gates")


def write_dedup_report(figures: Mapping[str, Any], out_html: Location,
                       out_json: Location) -> dict[str, Any]:
    """Write `dedup.html` and `dedup.json` (each atomically); returns the JSON-ready dict
    written."""
    prepared = prepare(figures)
    out_html.write_bytes(render_dedup_html(prepared).encode("utf-8"))
    clean = _excerpted(prepared)
    out_json.write_json(clean)
    return clean  # type: ignore[no-any-return]
