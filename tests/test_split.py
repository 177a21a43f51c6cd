"""The split: clusters never straddle, ratios hold, assignment is deterministic."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import functions as F

from pipeline.config import SplitConfig
from pipeline.split import SPLITS, assign_split, split_fractions

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def planted(spark):  # type: ignore[no-untyped-def]
    """10,000 rows in clusters of 1-5 members (sizes cycle), cluster id = min member id."""
    rows, i = [], 0
    while i < 10_000:
        size = 1 + (i // 7) % 5
        members = [f"doc-{j:06d}" for j in range(i, min(i + size, 10_000))]
        rows += [(m, members[0]) for m in members]
        i += size
    return spark.createDataFrame(rows, "doc_id string, cluster_id string")


def test_clusters_never_straddle_splits(planted) -> None:  # type: ignore[no-untyped-def]
    out = assign_split(planted, "cluster_id", SplitConfig())
    per_cluster = out.groupBy("cluster_id").agg(F.countDistinct("split").alias("n"))
    assert per_cluster.where("n > 1").count() == 0
    assert per_cluster.count() == planted.select("cluster_id").distinct().count()
    assert {r["split"] for r in out.select("split").distinct().collect()} == set(SPLITS)


def test_ratios_within_tolerance(planted) -> None:  # type: ignore[no-untyped-def]
    cfg = SplitConfig(train=0.7, val=0.2, test=0.1, seed=3)
    clusters = planted.select("cluster_id").distinct()
    fractions = split_fractions(assign_split(clusters, "cluster_id", cfg))
    n = clusters.count()
    for name, want in (("train", 0.7), ("val", 0.2), ("test", 0.1)):
        # 4 binomial standard deviations: fails by chance about once in 15,000 runs.
        tolerance = 4 * math.sqrt(want * (1 - want) / n)
        assert abs(fractions[name] - want) < tolerance, (name, fractions)
    rows = split_fractions(assign_split(planted, "cluster_id", cfg))
    assert abs(rows["train"] - 0.7) < 0.05 and sum(rows.values()) == pytest.approx(1.0)


def test_deterministic_across_order_and_partitions(planted) -> None:  # type: ignore[no-untyped-def]
    cfg = SplitConfig(seed=11)
    a = assign_split(planted, "cluster_id", cfg)
    b = assign_split(planted.orderBy(F.rand(5)).repartition(7), "cluster_id", cfg)
    joined = a.alias("a").join(b.alias("b"), "doc_id")
    assert joined.count() == 10_000
    assert joined.where(F.col("a.split") != F.col("b.split")).count() == 0


def test_seed_changes_assignment(planted) -> None:  # type: ignore[no-untyped-def]
    a = assign_split(planted, "cluster_id", SplitConfig(seed=0)).withColumnRenamed("split", "s0")
    b = assign_split(planted, "cluster_id", SplitConfig(seed=1)).select("doc_id", "split")
    moved = a.join(b, "doc_id").where(F.col("s0") != F.col("split")).count()
    assert moved > 1000  # independent draws differ for ~1 - (.8^2 + .1^2 + .1^2) = 34%


def test_zero_ratio_split_is_empty(planted) -> None:  # type: ignore[no-untyped-def]
    fractions = split_fractions(assign_split(planted, "cluster_id",
                                             SplitConfig(train=0.9, val=0.1, test=0.0)))
    assert fractions["test"] == 0.0 and fractions["train"] > 0.8


def test_null_cluster_is_an_error(spark) -> None:  # type: ignore[no-untyped-def]
    df = spark.createDataFrame([("a", None)], "doc_id string, cluster_id string")
    with pytest.raises(Exception, match="null cluster_id"):
        assign_split(df, "cluster_id", SplitConfig()).collect()
