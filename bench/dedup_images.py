"""Image dedup throughput and quality: the Spark stage vs a one-process `imagehash` baseline.

Sample images with planted byte copies, re-encodes, resizes and crops come from
`pipeline.synth`; the real image ingest turns them into the curated table, written once to
Parquet (not timed). Then, in one run:

1. near-dup dedup, images/s per core:
   - ours: `pipeline.dedup.images.image_dedup` on local[2] (exact by bytes, by pixels,
     pHash in mapInArrow, band join, connected components), writing kept + duplicates;
   - baseline: one Python process, pyarrow read, sha256 exact dedup, `imagehash.phash`
     per image, all-pairs Hamming with numpy, union-find, pyarrow write of kept rows.
   Both are scored against the ground truth: exact copies need P = R = 1, re-encodes and
   resizes recall >= 0.95 (crops are reported, not required).
2. exact dedup, MB/s per core: the curated table replicated `--copies` times (new ids,
   same bytes) deduplicated by content_hash with `exact_dedup` (read, dedup, write) vs a
   single-threaded pyarrow read + write of the same Parquet (the I/O floor).

    python bench/dedup_images.py            # ~2,000 images
    python bench/dedup_images.py --quick    # ~200 images, a smoke run

The baseline needs `imagehash` (the `bench` extra: imagehash, scipy, PyWavelets).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
SPARK_CORES = 2
NEAR_KINDS = ("reencode", "resize")


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.parquet")) / 1e6


def _ours(spark, curated: Path, out: Path,  # type: ignore[no-untyped-def]
          dhash_max: int | None = None) -> tuple[float, dict[str, str], dict[str, str]]:
    from pipeline.config import DedupConfig
    from pipeline.dedup.images import image_dedup

    images = spark.read.parquet(str(curated))
    warm = image_dedup(spark, images.limit(40), DedupConfig())  # JIT, UDF workers, untimed
    warm.kept.write.mode("overwrite").parquet(str(out / "warm"))
    warm.release()
    t0 = time.perf_counter()
    res = image_dedup(spark, spark.read.parquet(str(curated)), DedupConfig(),
                      dhash_max_hamming=dhash_max)
    res.kept.write.mode("overwrite").parquet(str(out / "kept"))
    res.duplicates.write.mode("overwrite").parquet(str(out / "duplicates"))
    seconds = time.perf_counter() - t0
    res.release()
    kept = spark.read.parquet(str(out / "kept")).select("image_id", "cluster_id").collect()
    dups = spark.read.parquet(str(out / "duplicates")).select(
        "dropped_id", "cluster_id", "rule").collect()
    cluster = {r["image_id"]: r["cluster_id"] for r in kept}
    cluster.update({r["dropped_id"]: r["cluster_id"] for r in dups})
    return seconds, cluster, {r["dropped_id"]: r["rule"] for r in dups}


def _baseline(curated: Path, out: Path, max_hamming: int) -> tuple[float, dict[str, str],
                                                                    dict[str, str]]:
    import imagehash
    from PIL import Image

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    t0 = time.perf_counter()
    table = pq.read_table(curated, columns=["image_id", "bytes", "width", "height"])
    ids = table.column("image_id").to_pylist()
    blobs = table.column("bytes").to_pylist()
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rule: dict[str, str] = {}
    first: dict[str, int] = {}
    unique: list[int] = []
    for i, blob in enumerate(blobs):
        digest = hashlib.sha256(blob).hexdigest()
        if digest in first:
            parent[find(i)] = find(first[digest])
            rule[ids[i]] = "exact"
        else:
            first[digest] = i
            unique.append(i)
    hashes = np.array([int(str(imagehash.phash(Image.open(io.BytesIO(blobs[i])))), 16)
                       for i in unique], dtype=np.uint64)
    dist = np.bitwise_count(hashes[:, None] ^ hashes[None, :])  # all pairs, vectorized
    for a, b in zip(*np.nonzero(np.triu(dist <= max_hamming, k=1)), strict=True):
        ra, rb = find(unique[int(a)]), find(unique[int(b)])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
            rule.setdefault(ids[max(unique[int(a)], unique[int(b)])], "near_dup")
    roots = [find(i) for i in range(len(ids))]
    keep = [i for i in range(len(ids)) if roots[i] == i]
    pq.write_table(table.take(keep), out / "baseline_kept.parquet", compression="zstd")
    seconds = time.perf_counter() - t0
    pa.set_cpu_count(os.cpu_count() or 1)
    return seconds, {ids[i]: ids[roots[i]] for i in range(len(ids))}, rule


def _report(spark, curated: Path, out: Path, report_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """Write dedup.html/json for the images of this run (exercises the report end to end)."""
    from pipeline.config import DedupConfig, GatesConfig, to_dict
    from pipeline.dedup.report import collect_modality, write_dedup_report
    from pipeline.gates import evaluate_gates
    from pipeline.quality import quality_figures
    from pipeline.storage import Location

    records = spark.read.parquet(str(curated))
    kept = spark.read.parquet(str(out / "kept"))
    dups = spark.read.parquet(str(out / "duplicates"))
    entry = collect_modality(kept, dups, records, id_col="image_id", content_col="bytes",
                             n_pairs=12, pair_rules=None)
    entry["quality"] = quality_figures("images", kept, duplicates=dups)
    entry["gates"] = [g.to_dict() for g in evaluate_gates(entry["quality"], GatesConfig())]
    figures = {"run_id": "bench-dedup-images", "config": to_dict(DedupConfig()),
               "modalities": {"images": entry}}
    report_dir.mkdir(parents=True, exist_ok=True)
    write_dedup_report(figures, Location(str(report_dir / "dedup.html")),
                       Location(str(report_dir / "dedup.json")))
    print(f"report: {report_dir / 'dedup.html'}")


def _score(cluster: Mapping[str, str], rule: Mapping[str, str], planted: list[tuple[str, str, str]]
           ) -> dict[str, float]:
    scores: dict[str, float] = {}
    for kind in sorted({k for _, _, k in planted}):
        pairs = [(a, b) for a, b, k in planted if k == kind]
        scores[f"recall_{kind}"] = sum(cluster[a] == cluster[b] for a, b in pairs) / len(pairs)
    exact_pairs = [(a, b) for a, b, k in planted if k == "exact"]
    exact_members = {x for p in exact_pairs for x in p}
    flagged = [d for d, r in rule.items() if r == "exact"]
    scores["exact_precision"] = (sum(d in exact_members for d in flagged) / len(flagged)
                                 if flagged else 0.0)
    scores["exact_recall"] = sum(rule.get(a) == "exact" or rule.get(b) == "exact"
                                 for a, b in exact_pairs) / len(exact_pairs)
    # Precision of all merges: a dropped image is right when its cluster holds its planted
    # partner (every planted copy has exactly one).
    partner = {a: b for a, b, _ in planted} | {b: a for a, b, _ in planted}
    merged = list(rule)
    scores["merge_precision"] = (sum(d in partner and cluster[d] == cluster[partner[d]]
                                     for d in merged) / len(merged)) if merged else 0.0
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="~200 images, smoke run")
    parser.add_argument("--scale", type=float, default=None, help="synth scale (200 per 1.0)")
    parser.add_argument("--copies", type=int, default=None, help="replicas for exact dedup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dhash-max", type=int, default=None,
                        help="also score a run that requires dHash <= this for near-dups")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write dedup.html/json for this run into this folder")
    args = parser.parse_args(argv)
    scale = args.scale if args.scale is not None else (1.0 if args.quick else 10.0)
    copies = args.copies if args.copies is not None else (2 if args.quick else 4)

    from pipeline import synth
    from pipeline.config import DedupConfig, ImageInputConfig, SparkConfig
    from pipeline.dedup.exact import exact_dedup
    from pipeline.ingest.images import ingest_images
    from pipeline.spark import get_spark
    from pipeline.storage import Location

    work = Path(tempfile.mkdtemp(prefix="bench-dedup-images-"))
    try:
        truth = synth.generate(work / "raw", scale=scale, seed=args.seed, modalities=("images",))
        spark = get_spark(SparkConfig(master=f"local[{SPARK_CORES}]", shuffle_partitions=4,
                                      driver_memory="3g", app_name="bench-dedup-images"))
        ingested = ingest_images(spark, ImageInputConfig(),
                                 [Location(str(work / "raw" / "images"))])
        curated = work / "curated"
        ingested.curated.coalesce(4).write.parquet(str(curated))
        sources = {r["source"]: r["image_id"] for r in
                   spark.read.parquet(str(curated)).select("source", "image_id").collect()}
        by_file = {s.split("/raw/", 1)[1]: i for s, i in sources.items()}
        planted = [(by_file[d.original_file], by_file[d.copy_file], d.kind)
                   for d in truth.duplicates_for("images")]
        n = len(sources)

        t_ours, cl_ours, rule_ours = _ours(spark, curated, work / "ours")
        if args.report is not None:
            _report(spark, curated, work / "ours", args.report)
        k = DedupConfig().phash_max_hamming
        t_base, cl_base, rule_base = _baseline(curated, work, k)
        s_dhash = None
        if args.dhash_max is not None:
            _, cl_dh, rule_dh = _ours(spark, curated, work / "ours_dhash", args.dhash_max)
            s_dhash = _score(cl_dh, rule_dh, planted)
        s_ours, s_base = _score(cl_ours, rule_ours, planted), _score(cl_base, rule_base, planted)

        # Exact dedup throughput on a replicated table.
        from pyspark.sql import functions as F

        base_df = spark.read.parquet(str(curated))
        replicated = base_df
        for c in range(1, copies):
            replicated = replicated.unionByName(
                base_df.withColumn("image_id", F.concat(F.col("image_id"), F.lit(f"-r{c}"))))
        rep_path = work / "replicated"
        replicated.coalesce(4).write.parquet(str(rep_path))
        mb = _size_mb(rep_path)
        t0 = time.perf_counter()
        kept, dups = exact_dedup(spark.read.parquet(str(rep_path)), "image_id", "content_hash")
        kept.write.mode("overwrite").parquet(str(work / "exact_kept"))
        dups.write.mode("overwrite").parquet(str(work / "exact_dups"))
        t_exact = time.perf_counter() - t0
        pa.set_cpu_count(1)
        pa.set_io_thread_count(1)
        t0 = time.perf_counter()
        pq.write_table(pq.read_table(rep_path), work / "pyarrow_copy.parquet", compression="zstd")
        t_arrow = time.perf_counter() - t0
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"images: {n} curated ({len(planted)} planted copies), pHash max Hamming {k}; "
          f"ours local[{SPARK_CORES}], baseline 1 process")
    ours_rate, base_rate = n / t_ours / SPARK_CORES, n / t_base
    print(f"{'near-dup dedup':<22}{'seconds':>9}{'images/s/core':>15}")
    print(f"{'  ours (Spark)':<22}{t_ours:>9.2f}{ours_rate:>15.1f}")
    print(f"{'  imagehash baseline':<22}{t_base:>9.2f}{base_rate:>15.1f}")
    print(f"  ratio ours/baseline per core: {ours_rate / base_rate:.2f}")
    extra = f"{'+dHash<=' + str(args.dhash_max):>14}" if s_dhash else ""
    print(f"{'quality':<22}{'ours':>9}{'baseline':>10}{extra}")
    for key in sorted(s_ours):
        more = f"{s_dhash[key]:>14.3f}" if s_dhash else ""
        print(f"  {key:<20}{s_ours[key]:>9.3f}{s_base[key]:>10.3f}{more}")
    e_ours, e_arrow = mb / t_exact / SPARK_CORES, mb / t_arrow
    print(f"exact dedup on {copies}x replicated table ({mb:.1f} MB Parquet, {n * copies} rows)")
    print(f"  ours exact_dedup read+dedup+write: {t_exact:.2f} s = {e_ours:.1f} MB/s/core")
    print(f"  pyarrow read+write (1 thread):     {t_arrow:.2f} s = {e_arrow:.1f} MB/s/core")
    print(f"  ratio ours/pyarrow per core: {e_ours / e_arrow:.2f}")
    ok = (s_ours["exact_precision"] == 1.0 and s_ours["exact_recall"] == 1.0
          and all(s_ours[f"recall_{kind}"] >= 0.95 for kind in NEAR_KINDS))
    print("quality targets (exact P = R = 1, re-encode/resize recall >= 0.95):",
          "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
