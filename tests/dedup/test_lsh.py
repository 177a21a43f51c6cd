"""Spark near-duplicate text dedup on real prose with planted, measured near-duplicates."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import numpy as np
import pytest
from pyspark.sql import functions as F

from pipeline.config import DedupConfig
from pipeline.dedup.exact import DUPLICATES_SCHEMA
from pipeline.dedup.lsh import ALL_PAIRS_MAX, candidate_pairs, score_pairs, text_near_dedup
from pipeline.textnorm import content_hash, jaccard, normalize_text, word_shingles

pytestmark = pytest.mark.integration

SCHEMA = ("doc_id string, source string, text string, n_chars int, content_hash string, "
          "label string, raw_id string")


@cache
def _sentences() -> tuple[str, ...]:
    text = normalize_text(" ".join(topics.values()))
    return tuple(s for s in re.split(r"(?<=[.!?]) ", text) if 6 <= len(s.split(" ")) <= 40)


def _true_j(a: str, b: str) -> float:
    return jaccard(word_shingles(a), word_shingles(b))


def edit_to_jaccard(rng: np.random.Generator, text: str, target: float) -> tuple[str, float]:
    """Replace words of `text` one at a time (random positions, random vocabulary words)
    and return the edit whose true 5-shingle Jaccard to `text` is closest to `target`."""
    words = text.split(" ")
    vocab = sorted({w for s in _sentences()[:400] for w in s.split(" ")})
    best = (text, 1.0)
    while True:
        pos = int(rng.integers(len(words)))
        words[pos] = vocab[int(rng.integers(len(vocab)))] + "x"  # 'x': never the original
        candidate = " ".join(words)
        j = _true_j(text, candidate)
        if abs(j - target) < abs(best[1] - target):
            best = (candidate, j)
        if j < target:
            return best


def _row(doc_id: str, text: str) -> tuple[Any, ...]:
    return (doc_id, f"file:///raw/part-0.jsonl:{doc_id}", text, len(text), content_hash(text),
            None, None)


@cache
def planted_corpus() -> tuple[list[tuple[Any, ...]], list[tuple[str, str, float]]]:
    """~50 documents of 12 sentences each; planted pairs (base, copy, true Jaccard).

    chain-a and chain-c are both edits of doc-025: one cluster of three in which the two
    edits (the longer texts, so one is kept) are not similar enough to pair directly."""
    rng = np.random.default_rng(2024)
    sents = _sentences()
    bases = [" ".join(sents[i] for i in rng.choice(len(sents), 12, replace=False))
             for _ in range(30)]
    rows = [_row(f"doc-{i:03d}", t) for i, t in enumerate(bases)]
    planted: list[tuple[str, str, float]] = []
    targets = [0.95] * 4 + [0.9] * 4 + [0.85] * 4 + [0.5] * 4
    for k, target in enumerate(targets):
        copy, j = edit_to_jaccard(rng, bases[k], target)
        rows.append(_row(f"near-{k:03d}", copy))
        planted.append((f"doc-{k:03d}", f"near-{k:03d}", j))
    for k in range(2):  # exact copies of doc-020
        rows.append(_row(f"copy-{k}", bases[20]))
        planted.append(("doc-020", f"copy-{k}", 1.0))
    for name in ("chain-a", "chain-c"):  # both near doc-025, further from each other
        copy, j = edit_to_jaccard(rng, bases[25], 0.86)
        rows.append(_row(name, copy))
        planted.append(("doc-025", name, j))
    rows.append(_row("empty", ""))
    return rows, planted


def _clusters(result: Any) -> dict[str, str]:
    out = {r["doc_id"]: r["minhash_cluster"] for r in result.kept.collect()}
    out.update({r["dropped_id"]: r["cluster_id"] for r in result.duplicates.collect()})
    return out


@pytest.fixture(scope="module")
def dedup_run(spark: Any) -> tuple[Any, Any, dict[str, Any]]:
    rows, _ = planted_corpus()
    docs = spark.createDataFrame(rows, SCHEMA)
    result = text_near_dedup(spark, docs, DedupConfig())
    collected = {
        "kept": sorted(tuple(r) for r in result.kept.collect()),
        "duplicates": sorted(tuple(r) for r in result.duplicates.collect()),
        "pairs": [r.asDict() for r in result.pairs.collect()],
    }
    return docs, result, collected


def test_planted_near_duplicates_found_and_far_pairs_not_merged(dedup_run: Any) -> None:
    docs, result, _ = dedup_run
    _, planted = planted_corpus()
    clusters = _clusters(result)
    assert set(clusters) == {r["doc_id"] for r in docs.collect()}
    by_bin = {b: [j for *_, j in planted if abs(j - b) <= 0.03] for b in (0.95, 0.9, 0.85, 0.5)}
    assert all(len(js) >= 4 for js in by_bin.values()), by_bin  # every bin is populated
    for base, copy, j in planted:
        if j >= 0.82:
            assert clusters[base] == clusters[copy], (base, copy, j)
        if j <= 0.6:
            assert clusters[base] != clusters[copy], (base, copy, j)
    # A cluster's id is its smallest member.
    members: dict[str, list[str]] = {}
    for doc, cluster in clusters.items():
        members.setdefault(cluster, []).append(doc)
    assert all(cluster == min(ms) for cluster, ms in members.items())


def test_keep_rule_similarity_and_reconciliation(dedup_run: Any) -> None:
    docs, result, collected = dedup_run
    texts = {r["doc_id"]: r["text"] for r in docs.collect()}
    kept = {r[0] for r in collected["kept"]}
    dups = collected["duplicates"]
    assert len(kept) + len(dups) == docs.count()
    assert kept.isdisjoint(d[0] for d in dups)
    assert [f.name for f in result.duplicates.schema] == DUPLICATES_SCHEMA.fieldNames()
    assert result.kept.columns == [*docs.columns, "minhash_cluster", "cluster_id"]
    clusters = _clusters(result)
    for dropped, kept_id, rule, similarity, cluster in dups:
        assert rule == "near_dup" and kept_id in kept and clusters[kept_id] == cluster
        # Keep rule: longest text, then smallest doc_id, among the cluster's members.
        group = [d for d, c in clusters.items() if c == cluster]
        assert kept_id == min(group, key=lambda d: (-len(texts[d]), d))
        assert similarity == pytest.approx(_true_j(texts[dropped], texts[kept_id]), abs=1e-12)
    copies = {"doc-020", "copy-0", "copy-1"}  # identical: the smallest id stays
    assert copies & kept == {"copy-0"} and copies - {"copy-0"} <= {d[0] for d in dups}
    for pair in collected["pairs"]:  # verified Jaccard is exact; the estimate is close
        truth = _true_j(texts[pair["id_a"]], texts[pair["id_b"]])
        assert pair["id_a"] < pair["id_b"]
        assert pair["jaccard"] == pytest.approx(truth, abs=1e-12)
        assert abs(pair["est_jaccard"] - truth) < 5 * np.sqrt(truth * (1 - truth) / 128) + 1e-9
        assert pair["accepted"] == (truth >= 0.8)


def test_chain_member_gets_its_similarity_to_the_keeper(dedup_run: Any) -> None:
    docs, result, collected = dedup_run
    texts = {r["doc_id"]: r["text"] for r in docs.collect()}
    j_ac = _true_j(texts["chain-a"], texts["chain-c"])
    assert j_ac < 0.8 <= min(_true_j(texts["doc-025"], texts[c]) for c in ("chain-a", "chain-c"))
    clusters = _clusters(result)
    assert clusters["chain-a"] == clusters["chain-c"] == clusters["doc-025"] == "chain-a"
    dups = {d[0]: d for d in collected["duplicates"]}
    keeper = max(("chain-a", "chain-c"), key=lambda d: (len(texts[d]), d == "chain-a"))
    other = "chain-c" if keeper == "chain-a" else "chain-a"
    assert dups[other][1] == keeper and dups[other][3] == pytest.approx(j_ac, abs=1e-12)


def test_deterministic_under_shuffled_input(spark: Any, dedup_run: Any) -> None:
    docs, _, collected = dedup_run
    shuffled = docs.repartition(3).orderBy(F.rand(seed=17))
    again = text_near_dedup(spark, shuffled, DedupConfig())
    assert sorted(tuple(r) for r in again.kept.collect()) == collected["kept"]
    assert sorted(tuple(r) for r in again.duplicates.collect()) == collected["duplicates"]


def test_without_verification_the_estimate_decides(spark: Any) -> None:
    rows, planted = planted_corpus()
    docs = spark.createDataFrame(rows[:34], SCHEMA)  # bases + the 0.95 and 0.9 copies
    result = text_near_dedup(spark, docs, dataclasses.replace(DedupConfig(), verify=False))
    dups = {r["dropped_id"]: r for r in result.duplicates.collect()}
    pairs = result.pairs.collect()
    assert all(p["jaccard"] is None and p["accepted"] == (p["est_jaccard"] >= 0.8)
               for p in pairs)
    for base, copy, j in planted[:4]:
        assert copy in dups or base in dups, (base, copy, j)
    assert all(0.8 <= d["similarity"] <= 1.0 for d in dups.values())
    assert result.kept.count() + len(dups) == len(rows[:34])


def test_buckets_emit_all_pairs_when_small_and_a_star_when_large(spark: Any) -> None:
    small = [f"s{i}" for i in range(ALL_PAIRS_MAX)]
    large = [f"l{i:02d}" for i in range(ALL_PAIRS_MAX + 3)]
    bands = [(m, 1) for m in small] + [(m, 2) for m in large] + [("s0", 3), ("s1", 3),
                                                                  ("l00", 4)]
    df = spark.createDataFrame(bands, "doc_id string, bkey long")
    got = {(r["id_a"], r["id_b"]) for r in candidate_pairs(df).collect()}
    want = {(a, b) for a in small for b in small if a < b} | {(large[0], m) for m in large[1:]}
    assert got == want


def test_bench_quick_run_meets_quality_goals(spark: Any) -> None:
    """`bench/dedup_text.py --quick` on the test session: quality goals (not speed), and
    the Spark stage clusters exactly as the one-process numpy path on the same hashes."""
    path = Path(__file__).resolve().parents[2] / "bench" / "dedup_text.py"
    spec = importlib.util.spec_from_file_location("bench_dedup_text", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up while executing it
    spec.loader.exec_module(bench)
    out = bench.run(bench.QUICK_DOCS, spark=spark)
    results = {r.name: r for r in out["results"]}
    np.testing.assert_array_equal(results["spark"].label, results["numpy"].label)
    assert sorted(results["spark"].merged) == sorted(results["numpy"].merged)
    quality = [v for v in out["verdicts"] if "recall" in v or "precision" in v]
    assert quality and all(v.startswith("PASS") for v in quality), quality


def test_score_pairs_broadcast_and_shuffle_plans_agree(spark: Any) -> None:
    rows, planted = planted_corpus()
    texts = spark.createDataFrame(rows, SCHEMA).select("doc_id", "text")
    pairs = spark.createDataFrame([(a, b) for a, b, _ in planted[:6]], "id_a string, id_b string")
    small = sorted(tuple(r) for r in score_pairs(pairs, texts, DedupConfig(), 6).collect())
    large = sorted(tuple(r) for r in score_pairs(pairs, texts, DedupConfig()).collect())
    assert small == large and len(small) == 6
    want = {(a, b): j for a, b, j in planted[:6]}  # ids sort as (base, copy)
    assert {(r[0], r[1]): r[3] for r in small} == pytest.approx(want, abs=1e-12)
