"""Image dedup: identical bytes, identical pixels, then perceptual near-duplicates.

Stages, each on the survivors of the one before, so only unique pixel contents are decoded:

1. `exact`  — equal `content_hash` (sha256 of the file bytes);
2. `pixels` — equal `pixel_hash` (same mode, size and decoded pixels, e.g. a PNG re-saved
   with other compression settings);
3. `near_dup` — 64-bit DCT pHash within `cfg.phash_max_hamming` bits. Hashes are computed
   in `mapInArrow` (batched numpy, `pipeline.dedup.phash`). Candidate pairs come from
   splitting each hash into `max_hamming + 1` disjoint bit bands (`phash.band_layout`: for
   the default 6, one band of 10 bits and six of 9): by pigeonhole any pair within the
   threshold agrees exactly on at least one band, so joining on (band index, band value)
   misses no pair. Each candidate pair is emitted once, from the first band it agrees on,
   and verified with Spark's `bit_count(a xor b) <= max_hamming`.
   Expected candidates for n uniformly random hashes: about n^2/2 * (k+1) / 2^(64/(k+1)),
   i.e. ~1.3% of all pairs at k = 6 (6e7 at n = 100k, 6e9 at n = 1M). pHash bits of real
   photos are less uniform and near-blank images share buckets, so this scheme suits
   corpora up to ~10^5-10^6 images; beyond that, or with a larger k, candidates need a
   stricter scheme (e.g. multi-probe on more, narrower bands).

All matches (exact and pixel duplicates as edges to their kept copy, verified pHash pairs)
form one graph; its connected components are the clusters, `cluster_id` being the smallest
image_id in the cluster (`pipeline.dedup.components`). The kept image of a cluster is the
best under one total order used by every stage: largest `width * height`, then the larger
file (a higher-quality encoding of the same picture), then the smallest image_id. Because
all stages use that order, the cluster's kept image is its global best.

Duplicates: every other member, with `kept_id` = the cluster's kept image and the rule of
the stage that removed it; similarity is 1.0 for exact/pixels and, for near_dup,
1 - hamming(dropped, kept) / 64 against the kept image itself (which, through a chain of
matches, may exceed the threshold). Counts reconcile: input = kept + duplicates.

The slim intermediate tables (hashes, pairs, earlier duplicates, ranked cluster members;
no bytes) are persisted, since decoding dominates the cost and every output reads them;
call `ImageDedupResult.release()` after writing the outputs. Arrow batches handed to the
hashing UDF are bounded by Spark's `spark.sql.execution.arrow.maxRecordsPerBatch` and
`maxBytesPerBatch`; inside, images are decoded `HASH_SLICE_ROWS` at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import DedupConfig
from pipeline.dedup import phash as ph
from pipeline.dedup.components import connected_components
from pipeline.dedup.exact import DUPLICATE_COLUMNS, duplicates_frame, exact_dedup

RULE_EXACT, RULE_PIXELS, RULE_NEAR = "exact", "pixels", "near_dup"
HASH_SLICE_ROWS = 256
PAIRS_SCHEMA = T.StructType([
    T.StructField("a_id", T.StringType(), False),
    T.StructField("b_id", T.StringType(), False),
    T.StructField("hamming", T.IntegerType(), False),
    T.StructField("similarity", T.DoubleType(), False),
])
_HASHES_SCHEMA = T.StructType([
    T.StructField("image_id", T.StringType(), False),
    T.StructField("phash", T.LongType(), True),
    T.StructField("dhash", T.LongType(), True),
])


@dataclass
class ImageDedupResult:
    """kept: input columns + cluster_id, phash, dhash; duplicates: DUPLICATES_SCHEMA;
    pairs: the verified near-duplicate pairs (PAIRS_SCHEMA, a_id < b_id)."""

    kept: DataFrame
    duplicates: DataFrame
    pairs: DataFrame
    _persisted: list[DataFrame] = field(default_factory=list, repr=False)

    def release(self) -> None:
        """Unpersist the cached intermediate tables (after the outputs are written)."""
        for df in self._persisted:
            df.unpersist()
        self._persisted.clear()


def preference(n_bytes: Column | None = None) -> list[Column]:
    """Sort order of the copy to keep: largest area, then largest file (`n_bytes`, default
    the length of `bytes`); the smallest id is the last tie-break, appended by the callers."""
    area = F.col("width").cast("long") * F.col("height").cast("long")
    size = F.length("bytes") if n_bytes is None else n_bytes
    return [area.desc_nulls_last(), size.desc_nulls_last()]


def _hash_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: (image_id, bytes) batches -> (image_id, phash, dhash) batches."""
    for batch in batches:
        # Slices bound the Python copies of the bytes (an Arrow batch can hold thousands of
        # large files); Pillow needs `bytes` objects, one decode per image.
        for start in range(0, batch.num_rows, HASH_SLICE_ROWS):
            part = batch.slice(start, HASH_SLICE_ROWS)
            phash, dhash, ok = ph.hash_images(part.column(1).to_pylist())
            yield pa.RecordBatch.from_arrays(
                [part.column(0), pa.array(phash, pa.int64(), mask=~ok),
                 pa.array(dhash, pa.int64(), mask=~ok)], names=["image_id", "phash", "dhash"])


def compute_hashes(images: DataFrame) -> DataFrame:
    """(image_id, phash, dhash) of every image; null hashes where the bytes do not decode."""
    return images.select("image_id", "bytes").mapInArrow(_hash_batches, _HASHES_SCHEMA)


def near_pairs(hashes: DataFrame, max_hamming: int,
               dhash_max_hamming: int | None = None) -> DataFrame:
    """Verified pairs (a_id < b_id) with Hamming(phash) <= max_hamming, each listed once;
    with `dhash_max_hamming`, pairs must also be that close in dHash (a second opinion)."""
    layout = ph.band_layout(max_hamming)

    def band(h: Column, shift: int, width: int) -> Column:
        if width == ph.HASH_BITS:  # k = 0: one band, the whole hash (no 64-bit mask fits)
            return h
        return F.shiftrightunsigned(h, shift).bitwiseAND(F.lit((1 << width) - 1))

    bands = F.explode(F.array(*[
        F.struct(F.lit(i).alias("band"), band(F.col("phash"), s, w).alias("value"))
        for i, (s, w) in enumerate(layout)]))
    exploded = (hashes.where(F.col("phash").isNotNull())
                .select("image_id", "phash", "dhash", bands.alias("b"))
                .select("image_id", "phash", "dhash", "b.band", "b.value"))
    a, b = exploded.alias("a"), exploded.alias("b")
    joined = a.join(b, (F.col("a.band") == F.col("b.band")) & (F.col("a.value") == F.col("b.value"))
                    & (F.col("a.image_id") < F.col("b.image_id")))
    x = F.col("a.phash").bitwiseXOR(F.col("b.phash"))
    # The first band on which the pair agrees; emitting only from it drops repeats
    # without a distinct() shuffle.
    first = F.lit(len(layout))
    for i, (s, w) in reversed(list(enumerate(layout))):
        first = F.when(band(x, s, w) == 0, F.lit(i)).otherwise(first)
    dist = F.bit_count(x)
    keep = (F.col("a.band") == first) & (dist <= max_hamming)
    if dhash_max_hamming is not None:
        keep = keep & (F.bit_count(F.col("a.dhash").bitwiseXOR(F.col("b.dhash")))
                       <= dhash_max_hamming)
    return (joined.where(keep)
            .select(F.col("a.image_id").alias("a_id"), F.col("b.image_id").alias("b_id"),
                    dist.cast("int").alias("hamming"),
                    (F.lit(1.0) - dist.cast("double") / ph.HASH_BITS).alias("similarity")))


def image_dedup(spark: SparkSession, images: DataFrame, cfg: DedupConfig, *,
                dhash_max_hamming: int | None = None) -> ImageDedupResult:
    """Deduplicate curated images (see the module docstring for the rules and outputs).

    `dhash_max_hamming` (off by default) additionally requires near-duplicate pairs to be
    within that dHash distance: on the synthetic shapes, 10 keeps every true pair and
    removes ~90% of the false pHash matches (see bench/dedup_images.py --dhash-max)."""
    del spark  # same signature as the other modalities; everything derives from `images`
    # Dedup decisions run on a slim metadata frame, so window shuffles never move the bytes;
    # the bytes are read twice (hashing the survivors, assembling the kept rows).
    meta = images.select("image_id", "content_hash", "pixel_hash", "width", "height",
                         F.length("bytes").alias("_n_bytes"))
    prefer = preference(F.col("_n_bytes"))
    kept1, dups1 = exact_dedup(meta, "image_id", "content_hash", prefer, rule=RULE_EXACT)
    kept2, dups2 = exact_dedup(kept1, "image_id", "pixel_hash", prefer, rule=RULE_PIXELS)

    survivors = images.join(kept2.select("image_id"), "image_id", "left_semi")
    # Persisted: all small (no bytes) and each read by several outputs; decoding in
    # particular must happen once.
    hashes = compute_hashes(survivors).persist()
    pairs = near_pairs(hashes, cfg.phash_max_hamming, dhash_max_hamming).persist()
    early = dups1.unionByName(dups2).persist()
    edges = (early.select(F.col("dropped_id").alias("src"), F.col("kept_id").alias("dst"))
             .unionByName(pairs.select(F.col("a_id").alias("src"), F.col("b_id").alias("dst"))))
    components = connected_components(edges)  # eager; checkpointed (node, component)

    ranked = (
        kept2.join(hashes, "image_id")
        .join(components.withColumnRenamed("node", "image_id"), "image_id", "left")
        .withColumn("cluster_id", F.coalesce(F.col("component"), F.col("image_id")))
    )
    order = Window.partitionBy("cluster_id").orderBy(*prefer, F.col("image_id").asc())
    ranked = (ranked.withColumn("_rank", F.row_number().over(order))
              .withColumn("_best", F.first("image_id").over(order))
              .withColumn("_best_phash", F.first("phash").over(order))
              .select("image_id", "cluster_id", "phash", "dhash", "_rank", "_best",
                      "_best_phash").persist())
    kept_slim = ranked.where(F.col("_rank") == 1).select("image_id", "cluster_id", "phash",
                                                         "dhash")
    kept = images.join(kept_slim, "image_id").select(*images.columns, "cluster_id", "phash",
                                                     "dhash")
    near = ranked.where(F.col("_rank") > 1)
    similarity = F.lit(1.0) - F.bit_count(
        F.col("phash").bitwiseXOR(F.col("_best_phash"))).cast("double") / ph.HASH_BITS
    near_dups = near.select(*duplicates_frame(F.col("image_id"), F.col("_best"), RULE_NEAR,
                                              F.coalesce(similarity, F.lit(0.0)),
                                              F.col("cluster_id")))

    # Earlier stages' duplicates point at their stage's survivor; re-point them at the
    # cluster's final kept image and cluster id.
    final = kept_slim.select(F.col("cluster_id").alias("_cluster"),
                             F.col("image_id").alias("_kept"))
    earlier = (early
               .join(components, F.col("dropped_id") == F.col("node"), "inner")
               .join(final, F.col("component") == F.col("_cluster"), "inner")
               .select(*[F.col("_kept").alias("kept_id") if c == "kept_id"
                         else F.col("_cluster").alias("cluster_id") if c == "cluster_id"
                         else F.col(c) for c in DUPLICATE_COLUMNS]))
    duplicates = earlier.unionByName(near_dups)
    return ImageDedupResult(kept=kept, duplicates=duplicates, pairs=pairs,
                            _persisted=[hashes, pairs, early, ranked])
