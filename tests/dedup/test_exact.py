"""Exact dedup by content hash: keep rule, cluster ids, determinism, reconciliation."""

from __future__ import annotations

from typing import Any

import pytest
from pyspark.sql import functions as F

from pipeline.dedup.exact import DUPLICATES_SCHEMA, exact_dedup, remap_clusters
from pipeline.textnorm import content_hash

pytestmark = pytest.mark.integration

TEXT_SCHEMA = ("doc_id string, source string, text string, n_chars int, content_hash string, "
               "label string, raw_id string")


def _text_rows() -> list[tuple[Any, ...]]:
    texts = {"d07": "alpha beta", "d03": "alpha beta", "d05": "alpha beta",
             "d01": "gamma", "d09": "gamma", "d02": "unique one", "d04": "Alpha beta"}
    rows = [(i, f"file:///raw.jsonl:{n}", t, len(t), content_hash(t), None, None)
            for n, (i, t) in enumerate(sorted(texts.items()))]
    rows.append(("d08", "file:///raw.jsonl:9", "no hash", 7, None, None, None))
    rows.append(("d06", "file:///raw.jsonl:10", "no hash", 7, None, None, None))
    return rows


def test_text_keeps_smallest_doc_id_per_identical_text(spark: Any) -> None:
    df = spark.createDataFrame(_text_rows(), TEXT_SCHEMA)
    kept, dups = exact_dedup(df, "doc_id", "content_hash")
    assert kept.columns == df.columns
    assert [(f.name, f.dataType) for f in dups.schema] == [
        (f.name, f.dataType) for f in DUPLICATES_SCHEMA]
    kept_ids = sorted(r["doc_id"] for r in kept.collect())
    # Case matters for content_hash (d04), rows without a hash are never merged (d06, d08).
    assert kept_ids == ["d01", "d02", "d03", "d04", "d06", "d08"]
    got = sorted(tuple(r) for r in dups.collect())
    assert got == [("d05", "d03", "exact", 1.0, "d03"), ("d07", "d03", "exact", 1.0, "d03"),
                   ("d09", "d01", "exact", 1.0, "d01")]
    assert kept.count() + dups.count() == df.count()


def test_prefer_order_and_determinism_under_shuffling(spark: Any) -> None:
    # Images: highest resolution first, then the smallest id; cluster = smallest id.
    rows = [("i1", "h", 10, 10), ("i2", "h", 20, 20), ("i3", "h", 20, 20), ("i4", "g", 5, 5),
            ("i5", "g", 5, 8), ("i6", "k", 1, 1)]
    df = spark.createDataFrame(rows, "image_id string, pixel_hash string, width int, height int")
    prefer = [(F.col("width") * F.col("height")).desc()]

    def run(frame: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
        kept, dups = exact_dedup(frame, "image_id", "pixel_hash", prefer, rule="pixels")
        return (sorted(r["image_id"] for r in kept.collect()),
                sorted(tuple(r) for r in dups.collect()))

    kept_ids, dups = run(df)
    assert kept_ids == ["i2", "i5", "i6"]
    assert dups == [("i1", "i2", "pixels", 1.0, "i1"), ("i3", "i2", "pixels", 1.0, "i1"),
                    ("i4", "i5", "pixels", 1.0, "i4")]
    shuffled = df.repartition(4, "width").orderBy(F.rand(seed=5))
    assert run(shuffled) == (kept_ids, dups)


def test_remap_clusters_follows_later_merges(spark: Any) -> None:
    df = spark.createDataFrame(_text_rows(), TEXT_SCHEMA)
    kept, dups = exact_dedup(df, "doc_id", "content_hash")
    # A later stage merged d03 into d01's cluster and dropped d01 into d02's.
    final_kept = kept.withColumn(
        "cluster_id", F.when(F.col("doc_id") == "d03", "d01").otherwise(F.col("doc_id")))
    later = spark.createDataFrame([("d01", "d02", "near_dup", 0.9, "c-d02")],
                                  DUPLICATES_SCHEMA)
    remapped = remap_clusters(dups, final_kept.filter("doc_id != 'd01'"), "doc_id", later)
    got = {r["dropped_id"]: r["cluster_id"] for r in remapped.collect()}
    assert got == {"d05": "d01", "d07": "d01", "d09": "c-d02"}
    assert remapped.columns == list(DUPLICATES_SCHEMA.fieldNames())
