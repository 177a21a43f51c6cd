"""Near-duplicate text detection on Spark: MinHash-LSH, verification, clustering.

Stages of `text_near_dedup` (nothing O(corpus) reaches the driver):

1. `band_rows`: MinHash signatures and band hashes per Arrow batch (`mapInArrow`, numpy
   from `minhash.py`), one list of band keys per document, exploded in the JVM into
   (doc_id, bkey) rows. Documents without shingles (empty text) take no part: they have
   no content to be near.
2. `candidate_pairs`: bucket by bkey (singletons dropped by a window count before any list
   is built); a bucket of k <= ALL_PAIRS_MAX members emits all k(k-1)/2 pairs, a bigger
   one the k-1 edges to its smallest member. All pairs keep every truly similar pair of a
   small bucket verifiable even when the bucket's smallest member is a chance collision;
   a star bounds the work of a bucket of boilerplate or exact copies to O(k) while keeping
   it connected, and a truly similar pair that a false root cuts off still meets in its
   other bands (16 x 0.85^8 = 4.4 shared bands expected at J = 0.85 with 16 x 8).
   Pairs are deduplicated as (id_a < id_b).
3. `score_pairs`: the two texts of each pair are brought together (the pair ends broadcast
   against one scan of the corpus when at most BROADCAST_MAX_ROWS, else a shuffled
   semi-join) and, per Arrow batch, shingle hashes are recomputed: `est_jaccard` is the
   signature agreement and, with `cfg.verify`, `jaccard` the exact Jaccard of the 64-bit
   shingle-hash sets. A pair is accepted when that (else the estimate) is >=
   cfg.jaccard_threshold.
4. `connected_components` (components.py) of the accepted pairs; a component is one
   near-duplicate cluster, `minhash_cluster` = `cluster_id` = its smallest doc_id (a
   document in no accepted pair is its own cluster).
5. Keep rule per cluster: the longest text (characters), then the smallest doc_id. Every
   other member becomes a duplicates row (rule "near_dup") whose `similarity` is the
   Jaccard to the kept document: exact when verifying (taken from the scored pair when the
   two are an accepted pair, else computed for that pair), the signature estimate when not.

`docs` is read by several jobs (bands, pair texts, the kept rows): pass a frame that is
cheap to recompute (a Parquet read) or persist it first. Exact copies may be present (they
form one cluster), but running `exact_dedup` on content_hash first is cheaper.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipeline.config import DedupConfig
from pipeline.dedup.components import _cut_lineage, connected_components
from pipeline.dedup.exact import duplicates_frame
from pipeline.dedup.minhash import (
    MinHasher,
    band_hashes,
    minhash_from_hashes,
    pair_similarity,
    perm_params,
    shingle_hashes,
)

if TYPE_CHECKING:
    from pipeline.modalities import DedupOutput

log = logging.getLogger(__name__)

ALL_PAIRS_MAX = 8
# Joins against pair/cluster tables up to this many rows broadcast them instead of
# shuffling the corpus (two strings a row: tens of MB at most).
BROADCAST_MAX_ROWS = 1_000_000
BAND_SCHEMA = "doc_id string, keys array<long>"
PAIR_SCHEMA = ("id_a string, id_b string, est_jaccard double, jaccard double, "
               "len_a int, len_b int")


@dataclass(frozen=True)
class NearDupResult:
    """Outputs of `text_near_dedup` (lazy frames over checkpointed intermediates).

    kept: the input columns + minhash_cluster + cluster_id, one row per kept document.
    duplicates: DUPLICATES_SCHEMA rows, rule "near_dup".
    pairs: every scored candidate pair (id_a < id_b, est_jaccard, jaccard (null without
    verification), len_a, len_b (characters), accepted): the LSH precision before and
    after verification.
    """

    kept: DataFrame
    duplicates: DataFrame
    pairs: DataFrame


def _band_batches(batches: Iterator[pa.RecordBatch], hasher: MinHasher, bands: int,
                  rows: int) -> Iterator[pa.RecordBatch]:
    a, b = perm_params(hasher.num_perm, hasher.seed)
    for batch in batches:
        hashes, offsets = shingle_hashes(batch.column(1), hasher.shingle_n)
        has_shingles = np.flatnonzero(np.diff(offsets) > 0)
        sig = minhash_from_hashes(hashes, offsets, a, b)[has_shingles]
        keys = band_hashes(sig, bands, rows).reshape(-1)
        # One row and one list per document: 16x fewer strings through Arrow than one row
        # per band; the JVM explodes it.
        list_offsets = pa.array(np.arange(0, len(keys) + 1, bands, dtype=np.int32))
        yield pa.RecordBatch.from_arrays([
            batch.column(0).take(pa.array(has_shingles)),
            pa.ListArray.from_arrays(list_offsets, pa.array(keys)),
        ], names=["doc_id", "keys"])


def band_rows(docs: DataFrame, cfg: DedupConfig, id_col: str = "doc_id",
              text_col: str = "text") -> DataFrame:
    """(doc_id, bkey): one row per document with shingles and per band.

    `bkey` is the band's hash; each band hashes with its own seed, so one key column
    identifies (band, rows) buckets without a band index (a cross-band collision has
    probability ~2^-64 and would only add a candidate for verification to reject).
    """
    hasher, bands, rows = MinHasher.from_config(cfg), cfg.bands, cfg.rows
    slim = docs.select(F.col(id_col).cast("string"), F.col(text_col).cast("string"))
    keyed = slim.mapInArrow(lambda it: _band_batches(it, hasher, bands, rows), BAND_SCHEMA)
    return keyed.select("doc_id", F.explode("keys").alias("bkey"))


def candidate_pairs(bands: DataFrame, all_pairs_max: int = ALL_PAIRS_MAX) -> DataFrame:
    """Distinct (id_a, id_b), id_a < id_b, of documents sharing a band bucket (`bkey`)."""
    members = F.col("members")
    k = F.size(members)
    # members is sorted, so every emitted pair is already (smaller, larger).
    all_pairs = F.flatten(F.transform(
        F.sequence(F.lit(1), k - 1),
        lambda i: F.transform(F.slice(members, i + 1, k - i),
                              lambda x: F.struct(F.element_at(members, i).alias("a"),
                                                 x.alias("b")))))
    star = F.transform(F.slice(members, 2, k - 1),
                       lambda x: F.struct(F.element_at(members, 1).alias("a"), x.alias("b")))
    # Nearly every bucket is a singleton: count first (the window and the group-by share
    # one shuffle by bkey) so that lists are only built for real collisions.
    shared = (bands.withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("bkey")))
                   .filter(F.col("n") > 1))
    buckets = shared.groupBy("bkey").agg(F.sort_array(F.collect_list("doc_id")).alias("members"))
    pairs = buckets.select(F.explode(F.when(k <= all_pairs_max, all_pairs).otherwise(star))
                           .alias("p"))
    return pairs.select(F.col("p.a").alias("id_a"), F.col("p.b").alias("id_b")).distinct()


def _score_batches(batches: Iterator[pa.RecordBatch], hasher: MinHasher,
                   exact: bool) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        est, jac = pair_similarity(batch.column(2), batch.column(3), hasher, exact)
        yield pa.RecordBatch.from_arrays([
            batch.column(0), batch.column(1), pa.array(est),
            pa.array(jac) if jac is not None else pa.nulls(len(est), pa.float64()),
            pc.utf8_length(batch.column(2)).cast(pa.int32()),
            pc.utf8_length(batch.column(3)).cast(pa.int32()),
        ], names=["id_a", "id_b", "est_jaccard", "jaccard", "len_a", "len_b"])


def _maybe_broadcast(df: DataFrame, max_rows: int) -> DataFrame:
    # A hint only when the side is known to be small: it passes through the driver, so it
    # must stay bounded (never O(corpus)); bigger sides fall back to shuffle joins.
    return F.broadcast(df) if max_rows <= BROADCAST_MAX_ROWS else df


def _pair_texts(pairs: DataFrame, texts: DataFrame, max_pairs: int | None) -> DataFrame:
    """(id_a, id_b, text_a, text_b) for each pair, shuffling only the texts of pairs."""
    if max_pairs is not None and 2 * max_pairs <= BROADCAST_MAX_ROWS:
        # One scan of the corpus against the broadcast pair ends, one shuffle of the
        # matched texts to bring each pair's two texts together.
        ends = pairs.select(F.col("id_a").alias("doc_id"), "id_a", "id_b").unionByName(
            pairs.select(F.col("id_b").alias("doc_id"), "id_a", "id_b"))
        matched = texts.join(F.broadcast(ends), "doc_id")

        def side(col: str) -> F.Column:
            return F.first(F.when(F.col("doc_id") == F.col(col), F.col("text")),
                           ignorenulls=True)

        return matched.groupBy("id_a", "id_b").agg(side("id_a").alias("text_a"),
                                                   side("id_b").alias("text_b"))
    ids = pairs.select(F.col("id_a").alias("doc_id")).unionByName(
        pairs.select(F.col("id_b").alias("doc_id"))).distinct()
    needed = texts.join(ids, "doc_id", "left_semi")
    ta = needed.select(F.col("doc_id").alias("id_a"), F.col("text").alias("text_a"))
    tb = needed.select(F.col("doc_id").alias("id_b"), F.col("text").alias("text_b"))
    return pairs.select("id_a", "id_b").join(ta, "id_a").join(tb, "id_b")


def score_pairs(pairs: DataFrame, texts: DataFrame, cfg: DedupConfig,
                max_pairs: int | None = None) -> DataFrame:
    """PAIR_SCHEMA rows for `pairs[id_a, id_b]`, given `texts[doc_id, text]`.

    `max_pairs` bounds len(pairs) when known: small pair sets are broadcast against the
    corpus, others semi-joined with it (a shuffle) first.
    """
    hasher, exact = MinHasher.from_config(cfg), cfg.verify
    joined = _pair_texts(pairs, texts, max_pairs)
    return (joined.select("id_a", "id_b", "text_a", "text_b")
                  .mapInArrow(lambda it: _score_batches(it, hasher, exact), PAIR_SCHEMA))


def _similarity(cfg: DedupConfig) -> F.Column:
    return F.col("jaccard") if cfg.verify else F.col("est_jaccard")


def text_near_dedup(spark: SparkSession, docs: DataFrame, cfg: DedupConfig,
                    id_col: str = "doc_id", text_col: str = "text") -> NearDupResult:
    """Cluster near-duplicate documents and keep one per cluster (see the module doc).

    Runs the candidate, scoring and components jobs eagerly (their results are
    checkpointed); `kept` and `duplicates` are lazy frames over them and `docs`.
    Counts reconcile: docs = kept + duplicates.
    """
    del spark  # unused: docs carries its session (the parameter keeps stage APIs alike)
    texts = docs.select(F.col(id_col).cast("string").alias("doc_id"),
                        F.col(text_col).cast("string").alias("text"))
    candidates = _cut_lineage(candidate_pairs(band_rows(texts, cfg)))
    n_candidates = candidates.count()  # counts of checkpointed frames: cheap
    scored = _cut_lineage(score_pairs(candidates, texts, cfg, n_candidates).withColumn(
        "accepted", F.coalesce(_similarity(cfg) >= F.lit(cfg.jaccard_threshold),
                               F.lit(False))))
    accepted = scored.filter("accepted")
    comps = connected_components(accepted, src="id_a", dst="id_b")
    # Every clustered document is in an accepted pair, which carries its length.
    lengths = accepted.select(F.col("id_a").alias("doc_id"), F.col("len_a").alias("len")
                              ).unionByName(accepted.select(F.col("id_b").alias("doc_id"),
                                                            F.col("len_b").alias("len")))
    keep_order = Window.partitionBy("component").orderBy(F.col("len").desc(),
                                                         F.col("doc_id").asc())
    keepers = (comps.join(lengths.distinct(), comps["node"] == lengths["doc_id"])
                    .select("node", "component",
                            F.first("doc_id").over(keep_order).alias("keeper")))
    # The similarity of each member to its keeper, where the two are an accepted pair.
    sims = accepted.select("id_a", "id_b", _similarity(cfg).alias("sim"))
    members = _cut_lineage(
        keepers.withColumn("id_a", F.least("node", "keeper"))
               .withColumn("id_b", F.greatest("node", "keeper"))
               .join(sims, ["id_a", "id_b"], "left"))
    n_members = members.count()  # counts of checkpointed frames: cheap
    log.info("text near-dup: %d candidate pairs, %d documents in near-dup clusters",
             n_candidates, n_members)
    # Underscored names so the join cannot collide with any input column.
    flags = members.select(F.col("node").alias("__node"), F.col("component").alias("__comp"),
                           F.col("keeper").alias("__keeper"))
    flags = _maybe_broadcast(flags, n_members)
    marked = docs.join(flags, F.col(id_col).cast("string") == flags["__node"], "left")
    is_dup = F.col("__keeper").isNotNull() & (F.col("__node") != F.col("__keeper"))
    cluster = F.coalesce(F.col("__comp"), F.col(id_col).cast("string"))
    kept = (marked.filter(~is_dup)
                  .select(*[docs[c] for c in docs.columns if c not in
                            ("minhash_cluster", "cluster_id")],
                          cluster.alias("minhash_cluster"), cluster.alias("cluster_id")))
    dups = members.filter(F.col("node") != F.col("keeper")).select(
        F.col("node").alias("dropped"), F.col("keeper").alias("kept"), "component",
        "id_a", "id_b", "sim")
    with_sim = dups.filter(F.col("sim").isNotNull())
    missing = dups.filter(F.col("sim").isNull()).drop("sim")
    n_missing = missing.count()
    if n_missing:  # members linked only through others: score them against the keeper
        with_sim = with_sim.unionByName(missing.join(
            score_pairs(missing, texts, cfg, n_missing).select(
                "id_a", "id_b", _similarity(cfg).alias("sim")), ["id_a", "id_b"]))
    duplicates = with_sim.select(*duplicates_frame(
        F.col("dropped"), F.col("kept"), "near_dup", F.col("sim"), F.col("component")))
    return NearDupResult(kept=kept, duplicates=duplicates, pairs=scored)


def text_dedup(spark: SparkSession, curated: DataFrame, cfg: DedupConfig) -> DedupOutput:
    """The text modality's dedup: exact (content hash), then MinHash-LSH near-duplicates
    of the exact survivors; duplicates of both rules point at the final kept document."""
    from pipeline.dedup.exact import exact_dedup, remap_clusters
    from pipeline.modalities import DedupOutput

    kept_exact, dup_exact = exact_dedup(curated, "doc_id", "content_hash")
    # The near-dup stage scans its input several times: keep the exact-dedup shuffle
    # from being recomputed for each scan.
    kept_exact = kept_exact.persist()
    near = text_near_dedup(spark, kept_exact, cfg)
    duplicates = remap_clusters(dup_exact, near.kept, "doc_id", later=near.duplicates
                                ).unionByName(near.duplicates)

    def release() -> None:
        kept_exact.unpersist()

    return DedupOutput(near.kept, duplicates, None, release)
