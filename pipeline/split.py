"""Deterministic, dedup-cluster-aware train/val/test assignment.

Each row's split is a pure function of (its dedup cluster id, the split seed): the cluster id
and the seed are hashed with Spark's built-in 64-bit xxHash, the top 53 bits of the hash are
read as a uniform number u in [0, 1), and u is compared with the cumulative ratios
(u < train -> train, u < train + val -> val, else test). Consequences:

- all members of a dedup cluster (a document and its near-duplicates, a transaction and its
  probable retries) land in the same split, so near-duplicates never straddle train/test;
- the assignment does not depend on row order, partitioning, executor count or run, and a
  cluster keeps its split when other rows are added or removed;
- ratios hold per cluster, so the row fractions match the ratios up to sampling noise of
  the number of clusters (and cluster-size skew).
"""

from __future__ import annotations

from collections.abc import Mapping

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.config import SplitConfig

SPLITS: tuple[str, ...] = ("train", "val", "test")
_MANTISSA_BITS = 53  # a double holds 53-bit integers exactly, so u is exact and < 1


def split_unit(cluster: Column, seed: int) -> Column:
    """Spark expression: a uniform double in [0, 1) from `cluster` and `seed`.

    `xxhash64` is Spark's own deterministic hash (same value on every executor, every
    version); the unsigned shift keeps its 53 high bits, which we scale by 2^-53.
    """
    h = F.xxhash64(cluster.cast("string"), F.lit(int(seed)))
    return F.shiftrightunsigned(h, 64 - _MANTISSA_BITS).cast("double") / float(2**_MANTISSA_BITS)


def split_expr(cluster: Column, cfg: SplitConfig) -> Column:
    """Spark expression: 'train', 'val' or 'test' for a cluster id under `cfg`."""
    total = cfg.train + cfg.val + cfg.test
    if total <= 0 or min(cfg.train, cfg.val, cfg.test) < 0:
        raise ValueError(f"split ratios must be >= 0 and sum to > 0, got {cfg}")
    u = split_unit(cluster, cfg.seed)
    train_cut, val_cut = cfg.train / total, (cfg.train + cfg.val) / total
    return (F.when(u < F.lit(train_cut), F.lit("train"))
             .when(u < F.lit(val_cut), F.lit("val"))
             .otherwise(F.lit("test")))


def assign_split(df: DataFrame, cluster_col: str, cfg: SplitConfig,
                 out_col: str = "split") -> DataFrame:
    """`df` plus a `split` string column in {train, val, test} derived from `cluster_col`.

    Rows with a null cluster id would all hash alike; we refuse to guess and raise at run time
    through Spark's `raise_error`, because a null cluster means dedup did not run properly.
    """
    cluster = F.col(cluster_col)
    checked = F.when(cluster.isNull(),
                     F.raise_error(F.lit(f"assign_split: null {cluster_col}"))).otherwise(cluster)
    return df.withColumn(out_col, split_expr(checked, cfg))


def split_fractions(df: DataFrame, split_col: str = "split") -> Mapping[str, float]:
    """Fraction of rows in each split (a three-row aggregate, safe to collect)."""
    rows = df.groupBy(split_col).count().collect()
    total = sum(int(r["count"]) for r in rows) or 1
    counts = {str(r[split_col]): int(r["count"]) for r in rows}
    return {s: counts.get(s, 0) / total for s in SPLITS}
