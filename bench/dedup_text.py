"""Near-duplicate text dedup: the Spark stage vs datasketch vs the plain numpy path.

A synthetic corpus (sentences of `pydoc_data.topics` recombined into ~12-sentence
documents) gets planted near-duplicates at known true Jaccard levels (word edits measured
with `pipeline.textnorm`) and exact copies; it is written once to Parquet (not timed).
Then, in one run and on identical parameters (num_perm, bands x rows, shingle n, threshold,
verification by exact shingle Jaccard, components, keep rule: longest then smallest id):

- spark:      `pipeline.dedup.lsh.text_near_dedup` on local[2] reading the Parquet and
              writing kept + duplicates Parquet;
- datasketch: one process, `MinHash.update_batch` + `MinHashLSH` insert/query, Python-set
              verification, union-find;
- numpy:      one process, `pipeline.dedup.minhash` signatures + sort-based band buckets,
              vectorized verification (`pair_similarity`), union-find.

The one-process paths also do the stage's I/O (pyarrow read of the same Parquet, zstd
write of kept rows and duplicates), so all three do the same work.

Reported per path: docs/s per core from wall time (wall x cores used), docs per CPU
second of the whole process tree (the Spark JVM and its Python workers included: on a
shared machine wall time mostly measures the neighbours), recall per true-Jaccard bin of
the planted pairs (same final cluster) and precision (merged dropped -> kept pairs whose
true Jaccard >= threshold). Each path runs `--repeat` times, interleaved, the fastest run
kept. Goals: spark >= 2x datasketch per core; spark per core within 3x of numpy per core;
recall >= 0.98 for J >= 0.85; precision >= 0.99 (speed verdicts printed for both clocks).

    python bench/dedup_text.py                 # 100,000 docs, best of 3 runs per path
    python bench/dedup_text.py --docs 20000 --repeat 1
    python bench/dedup_text.py --quick         # 5,000 docs, one run: a smoke run

datasketch is a benchmark-only dependency (the `bench` extra); without it that column is
skipped.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from pipeline.config import DedupConfig
from pipeline.dedup import minhash as mh
from pipeline.textnorm import jaccard, normalize_text, word_shingles

SPARK_CORES = 2
QUICK_DOCS = 5_000
TARGETS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
BINS = ((0.95, 1.01), (0.9, 0.95), (0.85, 0.9), (0.8, 0.85), (0.7, 0.8), (0.0, 0.7))
ALL_PAIRS_MAX = 8  # same bucket rule as pipeline.dedup.lsh


# ---------------------------------------------------------------------------------------
# Corpus


def _sentences() -> list[str]:
    from pydoc_data.topics import topics

    text = normalize_text(" ".join(topics.values()))
    return [s for s in re.split(r"(?<=[.!?]) ", text) if 6 <= len(s.split(" ")) <= 40]


def _edit(rng: np.random.Generator, text: str, target: float, vocab: list[str]
          ) -> tuple[str, float]:
    """Replace the first m of a random order of word positions; binary search m so the
    true Jaccard lands just above `target`."""
    words = text.split(" ")
    order = rng.permutation(len(words))
    repl = [vocab[i] + "x" for i in rng.integers(len(vocab), size=len(words))]
    base = word_shingles(text)

    def apply(m: int) -> tuple[str, float]:
        w = list(words)
        for p in order[:m]:
            w[p] = repl[p]
        out = " ".join(w)
        return out, jaccard(base, word_shingles(out))

    lo, hi = 1, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if apply(mid)[1] >= target:
            lo = mid
        else:
            hi = mid - 1
    return apply(lo)


def make_corpus(n_docs: int, seed: int = 0, planted_frac: float = 0.1
                ) -> tuple[list[str], list[tuple[int, int, float]]]:
    """Texts and planted (base index, copy index, true Jaccard); copies are at the end."""
    rng = np.random.default_rng(seed)
    sents = _sentences()
    vocab = sorted({w for s in sents for w in s.split(" ")})
    n_planted = int(n_docs * planted_frac)
    n_base = n_docs - n_planted
    lengths = rng.integers(8, 16, size=n_base)
    picks = rng.integers(len(sents), size=int(lengths.sum()))
    texts, at = [], 0
    for k in lengths:
        texts.append(" ".join(sents[i] for i in picks[at : at + k]))
        at += k
    planted = []
    bases = rng.choice(n_base, size=n_planted, replace=False)
    for k, b in enumerate(bases):
        target = TARGETS[k % len(TARGETS)]
        copy, j = (texts[b], 1.0) if target == 1.0 else _edit(rng, texts[b], target, vocab)
        planted.append((int(b), len(texts), j))
        texts.append(copy)
    return texts, planted


def doc_ids(n: int) -> list[str]:
    return [f"d{i:08d}" for i in range(n)]  # zero-padded: id order = index order


# ---------------------------------------------------------------------------------------
# Shared pieces of the one-process paths


@dataclass
class PathResult:
    name: str
    seconds: float
    cores: int
    label: np.ndarray  # final cluster label per doc index
    merged: list[tuple[int, int]] = field(default_factory=list)  # (dropped, kept)
    stages: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = float("nan")  # of this process and all its descendants


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and its descendants (the Spark JVM and its
    Python workers included), from /proc; NaN where /proc is missing.

    On a shared machine wall time depends on the neighbours; CPU time much less."""
    ticks = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return float("nan")
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        # fields[1] = ppid; [11..14] = utime, stime, cutime, cstime (reaped children)
        procs[int(name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / ticks)
    total, frontier = 0.0, [os.getpid()]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        pid = frontier.pop()
        total += procs.get(pid, (0, 0.0))[1]
        frontier += children.get(pid, [])
    return total


def _clusters(n: int, edges: Sequence[tuple[int, int]], lengths: np.ndarray
              ) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Union-find labels (component minimum) and (dropped, kept) by the stage's keep rule."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    label = np.array([find(i) for i in range(n)])
    groups: dict[int, list[int]] = {}
    for node in {x for e in edges for x in e}:
        groups.setdefault(int(label[node]), []).append(node)
    merged = []
    for members in groups.values():
        keeper = min(members, key=lambda d: (-int(lengths[d]), d))
        merged += [(d, keeper) for d in members if d != keeper]
    return label, merged


def _bucket_pairs(bands: np.ndarray) -> np.ndarray:
    """(a, b) index pairs, a < b, sharing a band bucket; buckets > ALL_PAIRS_MAX -> star."""
    out = []
    for k in range(bands.shape[1]):
        order = np.argsort(bands[:, k], kind="stable")
        col = bands[order, k]
        starts = np.flatnonzero(np.concatenate([[True], col[1:] != col[:-1]]))
        sizes = np.diff(np.concatenate([starts, [len(col)]]))
        two = starts[sizes == 2]
        a, b = order[two], order[two + 1]
        out.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        for s, z in zip(starts[sizes > 2], sizes[sizes > 2], strict=True):
            m = np.sort(order[s : s + z])
            if z <= ALL_PAIRS_MAX:
                ii, jj = np.triu_indices(z, 1)
                out.append(np.stack([m[ii], m[jj]], axis=1))
            else:
                out.append(np.stack([np.full(z - 1, m[0]), m[1:]], axis=1))
    pairs = np.concatenate(out) if out else np.zeros((0, 2), np.int64)
    return np.unique(pairs, axis=0)


# ---------------------------------------------------------------------------------------
# The three paths


def _write_outputs(table: pa.Table, label: np.ndarray, merged: list[tuple[int, int]],
                   out: Path) -> None:
    """What the stage writes: kept rows + cluster ids, and the duplicates table (zstd)."""
    ids = table.column("doc_id")
    dropped = np.zeros(len(table), bool)
    dropped[[d for d, _ in merged]] = True
    cluster = ids.take(pa.array(label))
    kept = table.append_column("minhash_cluster", cluster).append_column("cluster_id", cluster)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(kept.filter(pa.array(~dropped)), out / "kept.parquet", compression="zstd")
    d_idx = pa.array([d for d, _ in merged], pa.int64())
    k_idx = pa.array([k for _, k in merged], pa.int64())
    pq.write_table(pa.table({"dropped_id": ids.take(d_idx), "kept_id": ids.take(k_idx),
                             "rule": ["near_dup"] * len(merged),
                             "cluster_id": cluster.take(d_idx)}),
                   out / "duplicates.parquet", compression="zstd")


def run_numpy(parquet: Path, out: Path, cfg: DedupConfig) -> PathResult:
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    table = pq.read_table(parquet)
    texts = table.column("text").combine_chunks()
    hasher = mh.MinHasher.from_config(cfg)
    a, b = mh.perm_params(cfg.num_perm, cfg.seed)
    bands = []
    for s in range(0, len(texts), 10_000):
        h, o = mh.shingle_hashes(texts.slice(s, 10_000), cfg.shingle_n)
        bands.append(mh.band_hashes(mh.minhash_from_hashes(h, o, a, b), cfg.bands, cfg.rows))
    band_mat = np.concatenate(bands)
    t1 = time.perf_counter()
    pairs = _bucket_pairs(band_mat)
    t2 = time.perf_counter()
    keep = []
    for s in range(0, len(pairs), 10_000):
        p = pairs[s : s + 10_000]
        est, exact = mh.pair_similarity(texts.take(pa.array(p[:, 0])),
                                        texts.take(pa.array(p[:, 1])), hasher, cfg.verify)
        sim = exact if exact is not None else est
        keep.append(p[sim >= cfg.jaccard_threshold])
    accepted = np.concatenate(keep) if keep else np.zeros((0, 2), np.int64)
    t3 = time.perf_counter()
    lengths = np.asarray(pc.utf8_length(texts))
    label, merged = _clusters(len(texts), [tuple(e) for e in accepted.tolist()], lengths)
    t4 = time.perf_counter()
    _write_outputs(table, label, merged, out / "numpy")
    t5, c5 = time.perf_counter(), tree_cpu_seconds()
    return PathResult("numpy", t5 - t0, 1, label, merged,
                      {"read+signatures": t1 - t0, "buckets": t2 - t1, "verify": t3 - t2,
                       "components": t4 - t3, "write": t5 - t4}, c5 - c0)


def run_datasketch(parquet: Path, out: Path, cfg: DedupConfig) -> PathResult:
    from datasketch import MinHash, MinHashLSH

    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    table = pq.read_table(parquet)
    texts = table.column("text").to_pylist()
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(cfg.bands, cfg.rows))
    sketches = []
    template = MinHash(num_perm=cfg.num_perm, seed=cfg.seed)  # permutations drawn once
    with lsh.insertion_session() as session:
        for i, text in enumerate(texts):
            m = MinHash(num_perm=cfg.num_perm, seed=cfg.seed,
                        permutations=template.permutations, scheme=template.scheme)
            m.update_batch([s.encode("utf-8") for s in word_shingles(text, cfg.shingle_n)])
            session.insert(i, m, check_duplication=False)
            sketches.append(m)
    t1 = time.perf_counter()
    pairs = {(min(i, j), max(i, j)) for i, m in enumerate(sketches) for j in lsh.query(m)
             if j != i}
    t2 = time.perf_counter()
    accepted = []
    for i, j in sorted(pairs):
        a, b = word_shingles(texts[i], cfg.shingle_n), word_shingles(texts[j], cfg.shingle_n)
        sim = jaccard(a, b) if cfg.verify else sketches[i].jaccard(sketches[j])
        if sim >= cfg.jaccard_threshold:
            accepted.append((i, j))
    t3 = time.perf_counter()
    label, merged = _clusters(len(texts), accepted, np.array([len(t) for t in texts]))
    t4 = time.perf_counter()
    _write_outputs(table, label, merged, out / "datasketch")
    t5, c5 = time.perf_counter(), tree_cpu_seconds()
    return PathResult("datasketch", t5 - t0, 1, label, merged,
                      {"read+signatures": t1 - t0, "buckets": t2 - t1, "verify": t3 - t2,
                       "components": t4 - t3, "write": t5 - t4}, c5 - c0)


def run_spark(spark: Any, parquet: Path, out: Path, cfg: DedupConfig, n: int) -> PathResult:
    from pipeline.dedup.lsh import text_near_dedup

    warm = text_near_dedup(spark, spark.read.parquet(str(parquet)).limit(300), cfg)
    warm.kept.write.mode("overwrite").parquet(str(out / "warm"))  # workers, JIT: untimed
    c0, t0 = tree_cpu_seconds(), time.perf_counter()
    result = text_near_dedup(spark, spark.read.parquet(str(parquet)), cfg)
    t1 = time.perf_counter()
    result.kept.write.mode("overwrite").parquet(str(out / "kept"))
    result.duplicates.write.mode("overwrite").parquet(str(out / "duplicates"))
    t2, c2 = time.perf_counter(), tree_cpu_seconds()
    label = np.empty(n, np.int64)
    kept = pq.read_table(out / "kept", columns=["doc_id", "cluster_id"]).to_pydict()
    dups = pq.read_table(out / "duplicates").to_pydict()
    index = {d: i for i, d in enumerate(doc_ids(n))}
    for d, c in zip(kept["doc_id"], kept["cluster_id"], strict=True):
        label[index[d]] = index[c]
    for d, c in zip(dups["dropped_id"], dups["cluster_id"], strict=True):
        label[index[d]] = index[c]
    merged = [(index[d], index[k]) for d, k in zip(dups["dropped_id"], dups["kept_id"],
                                                   strict=True)]
    return PathResult("spark", t2 - t0, SPARK_CORES, label, merged,
                      {"candidates+verify+components": t1 - t0, "kept+dups write": t2 - t1},
                      c2 - c0)


# ---------------------------------------------------------------------------------------
# Scoring and the table


def score(res: PathResult, texts: list[str], planted: list[tuple[int, int, float]],
          threshold: float, n: int = 5) -> dict[str, Any]:
    recall = {}
    for lo, hi in BINS:
        pairs = [(a, b) for a, b, j in planted if lo <= j < hi]
        found = sum(res.label[a] == res.label[b] for a, b in pairs)
        recall[f"[{lo:.2f},{min(hi, 1.0):.2f}{']' if hi > 1 else ')'}"] = (
            found / len(pairs) if pairs else float("nan"), len(pairs))
    good = sum(jaccard(word_shingles(texts[d], n), word_shingles(texts[k], n)) >= threshold
               for d, k in res.merged)
    precision = good / len(res.merged) if res.merged else 1.0
    return {"docs_per_s_core": len(texts) / res.seconds / res.cores,
            "docs_per_cpu_s": len(texts) / res.cpu_seconds, "recall": recall,
            "precision": precision, "merged": len(res.merged)}


def _versions() -> str:
    import pyspark

    parts = [f"python {platform.python_version()}", f"numpy {np.__version__}",
             f"pyarrow {pa.__version__}", f"pyspark {pyspark.__version__}"]
    try:
        import datasketch

        parts.append(f"datasketch {datasketch.__version__}")
    except ImportError:
        pass
    return ", ".join(parts)


def print_table(results: list[PathResult], scores: dict[str, dict[str, Any]], n: int,
                cfg: DedupConfig, gen_s: float, repeat: int, load: float) -> list[str]:
    """Print the side-by-side table and return the goal verdict lines."""
    names = [r.name for r in results]
    w = 14
    print(f"\n{n:,} docs, best of {repeat} run(s) per path; corpus generated in {gen_s:.1f}s "
          "(not timed)")
    print(f"parameters: num_perm={cfg.num_perm}, bands x rows={cfg.bands}x{cfg.rows}, "
          f"shingle n={cfg.shingle_n}, threshold={cfg.jaccard_threshold}, "
          f"verify={cfg.verify}, seed={cfg.seed}")
    print(f"machine: {os.cpu_count()} cores ({platform.machine()}), load average at start "
          f"{load:.1f}; spark local[{SPARK_CORES}]; {_versions()}")
    print("metric".ljust(30) + "".join(x.rjust(w) for x in names))
    print("cores".ljust(30) + "".join(str(r.cores).rjust(w) for r in results))
    print("wall s".ljust(30) + "".join(f"{r.seconds:.2f}".rjust(w) for r in results))
    print("docs/s per core (wall)".ljust(30)
          + "".join(f"{scores[x]['docs_per_s_core']:,.0f}".rjust(w) for x in names))
    print("CPU s (process tree)".ljust(30) + "".join(f"{r.cpu_seconds:.2f}".rjust(w)
                                                     for r in results))
    print("docs per CPU s".ljust(30)
          + "".join(f"{scores[x]['docs_per_cpu_s']:,.0f}".rjust(w) for x in names))
    for bin_name, (_, count) in scores[names[0]]["recall"].items():
        print(f"recall J in {bin_name} n={count}".ljust(30) + "".join(
            f"{scores[x]['recall'][bin_name][0]:.4f}".rjust(w) for x in names))
    print("merged (dropped) docs".ljust(30)
          + "".join(str(scores[x]["merged"]).rjust(w) for x in names))
    print("precision".ljust(30) + "".join(f"{scores[x]['precision']:.4f}".rjust(w)
                                          for x in names))
    for r in results:
        print(f"  {r.name} stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in r.stages.items()))
    return _verdicts(scores)


def _verdicts(scores: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    sp = scores["spark"]["docs_per_s_core"]

    def goal(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'MISS'}  {text}")

    cpu = scores["spark"]["docs_per_cpu_s"]
    if "datasketch" in scores:
        ratio = sp / scores["datasketch"]["docs_per_s_core"]
        by_cpu = cpu / scores["datasketch"]["docs_per_cpu_s"]
        goal(ratio >= 2.0, f"spark vs datasketch per core: {ratio:.2f}x wall, {by_cpu:.2f}x "
             "CPU time (goal >= 2x)")
    overhead = scores["numpy"]["docs_per_s_core"] / sp
    by_cpu = scores["numpy"]["docs_per_cpu_s"] / cpu
    goal(overhead <= 3.0, f"spark overhead vs numpy per core: {overhead:.2f}x wall, "
         f"{by_cpu:.2f}x CPU time (goal <= 3x)")
    for name, s in scores.items():
        high = [v for k, (v, c) in s["recall"].items() if c and k[1:5] in ("0.95", "0.90",
                                                                          "0.85")]
        goal(min(high) >= 0.98, f"{name} recall J >= 0.85: min {min(high):.4f} (goal >= 0.98)")
        goal(s["precision"] >= 0.99, f"{name} precision {s['precision']:.4f} (goal >= 0.99)")
    for line in lines:
        print(line)
    return lines


def run(n_docs: int, spark: Any = None, with_datasketch: bool = True,
        shuffle_partitions: int = 4, repeat: int = 1) -> dict[str, Any]:
    """Run all paths on one corpus (each `repeat` times, the fastest run kept);
    returns {'scores', 'verdicts', 'results'}."""
    cfg = DedupConfig()
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    texts, planted = make_corpus(n_docs)
    gen_s = time.perf_counter() - t0
    tmp = Path(tempfile.mkdtemp(prefix="bench-dedup-text-"))
    own_spark = spark is None
    try:
        table = pa.table({"doc_id": doc_ids(len(texts)), "source": ["bench"] * len(texts),
                          "text": texts})
        parts = tmp / "docs"
        parts.mkdir()
        step = -(-len(texts) // 8)
        for k in range(8):  # several files so that Spark reads in parallel
            pq.write_table(table.slice(k * step, step), parts / f"part-{k:05d}.parquet")
        if own_spark:
            from pipeline.config import SparkConfig
            from pipeline.spark import get_spark

            spark = get_spark(SparkConfig(master=f"local[{SPARK_CORES}]",
                                          shuffle_partitions=shuffle_partitions,
                                          driver_memory="3g", app_name="bench-dedup-text",
                                          conf={"spark.ui.showConsoleProgress": "false"}))
        runners: list[Callable[[], PathResult]] = [
            lambda: run_spark(spark, parts, tmp, cfg, len(texts)),
            lambda: run_numpy(parts, tmp, cfg)]
        if with_datasketch:
            try:
                import datasketch  # noqa: F401

                runners.append(lambda: run_datasketch(parts, tmp, cfg))
            except ImportError:
                print("datasketch not installed: pip install datasketch (bench extra)")
        # Best of `repeat`, the paths interleaved so that each sees the same neighbours.
        runs: list[list[PathResult]] = [[] for _ in runners]
        for _ in range(repeat):
            for k, runner in enumerate(runners):
                runs[k].append(runner())
        results = [min(rs, key=lambda r: r.seconds) for rs in runs]
        scores = {r.name: score(r, texts, planted, cfg.jaccard_threshold, cfg.shingle_n)
                  for r in results}
        verdicts = print_table(results, scores, len(texts), cfg, gen_s, repeat, load)
        return {"scores": scores, "verdicts": verdicts, "results": results}
    finally:
        if own_spark and spark is not None:
            spark.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="corpus size")
    parser.add_argument("--quick", action="store_true", help="5,000 docs smoke run")
    parser.add_argument("--no-datasketch", action="store_true", help="skip that baseline")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per path, the fastest kept (default 3; 1 with --quick)")
    args = parser.parse_args(argv)
    n = QUICK_DOCS if args.quick else args.docs
    repeat = args.repeat or (1 if args.quick else 3)
    run(n, with_datasketch=not args.no_datasketch, repeat=repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
