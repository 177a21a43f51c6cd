"""Exact deduplication by a content hash, for any modality, plus the duplicates contract.

Rows sharing `hash_col` form one group. The kept row of a group is the first under
`prefer` (a list of Spark sort orders, e.g. `[(F.col("width") * F.col("height")).desc()]`
for images), with the smallest id always appended as the final tie-break, so the choice
never depends on row or partition order. With the default `prefer` (none) the kept row is
the smallest id: for text, the smallest doc_id among identical texts. The group's
`cluster_id` is its smallest member id: defined by the group's contents, not by which row
is kept, so it is stable too.

Implemented with one window over `hash_col` (one shuffle of the input, no collect).
Both outputs derive from the same windowed frame: persist `df` first if it is expensive to
recompute (a `Parquet` read is not).
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

DUPLICATES_SCHEMA = T.StructType([
    T.StructField("dropped_id", T.StringType(), False),
    T.StructField("kept_id", T.StringType(), False),
    T.StructField("rule", T.StringType(), False),
    T.StructField("similarity", T.DoubleType(), True),
    T.StructField("cluster_id", T.StringType(), False),
])
DUPLICATE_COLUMNS = tuple(DUPLICATES_SCHEMA.fieldNames())

_RANK = "__dedup_rank"
_KEPT = "__dedup_kept"
_CLUSTER = "__dedup_cluster"


def duplicates_frame(dropped: Column, kept: Column, rule: Column | str,
                     similarity: Column, cluster: Column) -> list[Column]:
    """The select list that projects any frame onto DUPLICATES_SCHEMA's columns."""
    rule_col = F.lit(rule) if isinstance(rule, str) else rule
    return [dropped.cast("string").alias("dropped_id"), kept.cast("string").alias("kept_id"),
            rule_col.cast("string").alias("rule"),
            similarity.cast("double").alias("similarity"),
            cluster.cast("string").alias("cluster_id")]


def exact_dedup(df: DataFrame, id_col: str, hash_col: str,
                prefer: Sequence[Column] = (), rule: str = "exact") -> tuple[DataFrame, DataFrame]:
    """Split `df` into (kept, duplicates) by equal `hash_col`.

    `kept` has exactly `df`'s columns (so a second pass, e.g. images' pixel hash after the
    bytes hash, can chain on it). `duplicates` follows DUPLICATES_SCHEMA: one row per
    dropped row with its group's kept id, `rule`, similarity 1.0 and cluster_id = the
    group's smallest id. Rows with a null hash are never grouped: each is kept.
    """
    by_hash = Window.partitionBy(hash_col)
    ordered = by_hash.orderBy(*prefer, F.col(id_col).asc())
    marked = (df.withColumn(_RANK, F.row_number().over(ordered))
                .withColumn(_KEPT, F.first(F.col(id_col)).over(ordered))
                .withColumn(_CLUSTER, F.min(F.col(id_col)).over(by_hash)))
    is_dup = (F.col(_RANK) > 1) & F.col(hash_col).isNotNull()
    kept = marked.filter(~is_dup).select(*df.columns)
    duplicates = marked.filter(is_dup).select(*duplicates_frame(
        F.col(id_col), F.col(_KEPT), rule, F.lit(1.0), F.col(_CLUSTER)))
    return kept, duplicates


def remap_clusters(duplicates: DataFrame, kept: DataFrame, id_col: str,
                   later: DataFrame | None = None, cluster_col: str = "cluster_id") -> DataFrame:
    """Give each duplicate the final cluster of the row it was merged into.

    After chained stages (exact, then near-dup), an earlier duplicate names a row whose
    cluster a later stage may have widened, or that a later stage dropped in turn. Its
    `cluster_id` becomes that row's `cluster_col` in `kept`, or the `cluster_id` of its
    row in `later` (the later stage's duplicates); it is unchanged when neither has it.
    """
    final = kept.select(F.col(id_col).cast("string").alias("__id"),
                        F.col(cluster_col).cast("string").alias("__final"))
    if later is not None:
        final = final.unionByName(later.select(F.col("dropped_id").alias("__id"),
                                               F.col("cluster_id").alias("__final")))
    joined = duplicates.join(final, duplicates["kept_id"] == final["__id"], "left")
    return joined.select(
        *[F.coalesce(F.col("__final"), F.col("cluster_id")).alias("cluster_id")
          if c == "cluster_id" else F.col(c) for c in DUPLICATE_COLUMNS])
