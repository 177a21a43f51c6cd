"""Connected components of a Spark edge DataFrame (large-star / small-star).

The alternating algorithm of Kiveris et al., "Connected Components in MapReduce and
Beyond" (SoCC 2014), on DataFrames. Edges are kept undirected, stored once as (u, v) with
u > v ("pointing down" to the smaller id):

- large-star: every node u links each larger neighbor to m(u), the minimum of u and its
  neighbors;
- small-star: every node u links itself and each smaller neighbor to the minimum of its
  smaller neighbors.

Neither changes the components; together they converge in O(log^2 n) rounds (far fewer than
min-label propagation's diameter-many on chains) to a forest of stars, each centered on
its component's minimum. That fixed point is the convergence test: an iteration changes
nothing exactly when no node has two outgoing edges and no edge's target has one. Each
round ends with a checkpoint (reliable when a checkpoint dir is set, else local) so the
lineage stays one round long; the test is then a cheap aggregate over it.

Node ids may be any orderable type (strings compare lexicographically). The output has one
row per node that has at least one edge (self-loops alone don't count), `component` being
the smallest node id of its component: defined by the graph alone, so it is the same for
any row order or partitioning.
"""

from __future__ import annotations

import logging

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

log = logging.getLogger(__name__)


class NotConvergedError(RuntimeError):
    """The star forest was not reached within max_iterations rounds."""


def _cut_lineage(df: DataFrame) -> DataFrame:
    if df.sparkSession.sparkContext.getCheckpointDir():
        return df.checkpoint(eager=True)
    return df.localCheckpoint(eager=True)


def _large_star(edges: DataFrame) -> DataFrame:
    both = edges.unionByName(edges.select(F.col("v").alias("u"), F.col("u").alias("v")))
    m = F.least(F.col("u"), F.min("v").over(Window.partitionBy("u")))
    return (both.withColumn("m", m).filter(F.col("v") > F.col("u"))
                .select(F.col("v").alias("u"), F.col("m").alias("v")))


def _small_star(edges: DataFrame) -> DataFrame:
    # Every stored edge points down, so u's neighbors here are exactly its smaller ones.
    with_m = edges.withColumn("m", F.min("v").over(Window.partitionBy("u")))
    linked = F.explode(F.array(F.col("u"), F.col("v")))
    return (with_m.select(linked.alias("u"), F.col("m").alias("v"))
                  .filter(F.col("u") != F.col("v")).distinct())


def _is_star_forest(edges: DataFrame) -> bool:
    """True when every node has <= 1 outgoing edge and no edge's target has one."""
    ends = edges.select(F.col("u").alias("node"), F.lit(1).alias("out"), F.lit(0).alias("in")
                        ).unionByName(
        edges.select(F.col("v").alias("node"), F.lit(0).alias("out"), F.lit(1).alias("in")))
    bad = (ends.groupBy("node").agg(F.sum("out").alias("o"), F.sum("in").alias("i"))
               .filter((F.col("o") > 1) | ((F.col("o") > 0) & (F.col("i") > 0))))
    return bad.limit(1).count() == 0


def connected_components(edges: DataFrame, src: str = "src", dst: str = "dst",
                         max_iterations: int = 40) -> DataFrame:
    """(node, component) for every node of the undirected graph `edges[src, dst]`.

    `component` is the minimum node id in the node's component. Runs Spark jobs eagerly
    (a few per round) and returns a frame computed from the checkpointed final edges.
    Null endpoints and self-loops are ignored. Raises NotConvergedError after
    `max_iterations` rounds.
    """
    u, v = F.col(src), F.col(dst)
    current = _cut_lineage(
        edges.filter(u.isNotNull() & v.isNotNull() & (u != v))
             .select(F.greatest(u, v).alias("u"), F.least(u, v).alias("v")).distinct())
    for round_no in range(1, max_iterations + 1):
        if _is_star_forest(current):
            log.info("connected components converged after %d round(s)", round_no - 1)
            break
        current = _cut_lineage(_small_star(_large_star(current)))
    else:
        if not _is_star_forest(current):
            raise NotConvergedError(
                f"connected components did not converge in {max_iterations} rounds")
    roots = current.select(F.col("v").alias("node"), F.col("v").alias("component")).distinct()
    return current.select(F.col("u").alias("node"), F.col("v").alias("component")).unionByName(
        roots)
