"""The dedup report: HTML parses, holds the plots and thumbnails, escapes text; JSON round-trips."""

from __future__ import annotations

import io
import itertools
import json
from html.parser import HTMLParser
from typing import Any

import pytest
from PIL import Image

from pipeline.config import DedupConfig, GatesConfig, to_dict
from pipeline.dedup.report import (
    EXCERPT_CHARS,
    cluster_size_histogram,
    collect_modality,
    exact_jaccard,
    prepare,
    sample_pairs,
    scurve,
    write_dedup_report,
)
from pipeline.gates import evaluate_gates
from pipeline.storage import Location
from pipeline.textnorm import jaccard, word_shingles

EVIL = "<img src=x onerror=alert(1)> & co"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _figures() -> dict[str, Any]:
    text = "the quick brown fox jumps over the lazy dog near the river bank today"
    quality = {"modality": "text", "rows": {"input": 10, "curated": 6, "duplicates": 3,
                                            "quarantined": 1, "reconciles": True},
               "duplicate_rate": {"total": 0.3, "by_rule": {"exact": 0.1, "near_dup": 0.2}},
               "quarantine_rate": {"total": 0.1, "by_reason": {"EMPTY_TEXT": 0.1}},
               "completeness": {"text": 0.0, "label": 0.5}}
    return {
        "run_id": "r1",
        "config": to_dict(DedupConfig()),
        "modalities": {
            "text": {
                "counts": {"input": 10, "kept": 6, "quarantined": 1,
                           "duplicates": {"exact": 1, "near_dup": 2}},
                "cluster_sizes": {1: 4, 2: 1, 3: 1},
                "pairs": [
                    {"dropped_id": "d2", "kept_id": "d1", "rule": "near_dup", "similarity": 0.9,
                     "dropped": text + " " + EVIL, "kept": text, "jaccard": 0.75},
                    {"dropped_id": "d3", "kept_id": "d1", "rule": "near_dup",
                     "similarity": 0.82, "dropped": "totally different words here now",
                     "kept": text, "jaccard": 0.0},
                    {"dropped_id": "d4", "kept_id": "d1", "rule": "near_dup",
                     "similarity": 0.95, "dropped": text[:40], "kept": text, "jaccard": 0.95},
                ],
                "quality": quality,
                "gates": [g.to_dict() for g in evaluate_gates(quality, GatesConfig())],
            },
            "images": {
                "counts": {"input": 3, "kept": 2, "quarantined": 0, "duplicates": {"exact": 1}},
                "cluster_sizes": {1: 1, 2: 1},
                "pairs": [{"dropped_id": "i2", "kept_id": "i1", "rule": "near_dup",
                           "similarity": 0.97, "dropped": _png((250, 0, 0)),
                           "kept": _png((0, 0, 250))}],
            },
        },
    }


@pytest.mark.unit
def test_report_html_and_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    html_path, json_path = tmp_path / "reports" / "dedup.html", tmp_path / "reports" / "dedup.json"
    written = write_dedup_report(_figures(), Location(str(html_path)),
                                 Location(str(json_path)))
    page = html_path.read_text(encoding="utf-8")
    parser = Tags()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert tags.count("svg") >= 4  # S-curve, 2 rule bars, 2 cluster-size charts
    assert "polyline" in tags
    imgs = [a for t, a in parser.tags if t == "img"]
    assert len(imgs) == 2 and all((a["src"] or "").startswith("data:image/png;base64,")
                                  for a in imgs)
    assert "onerror" not in {k for _, a in parser.tags for k in a}  # the evil text stayed text
    assert any(EVIL in t for t in parser.text)
    assert "threshold 0.8" in "".join(parser.text)
    # JSON round-trips and holds no raw bytes.
    loaded = json.loads(json_path.read_text(encoding="utf-8"))
    assert loaded == written
    pair = loaded["modalities"]["images"]["pairs"][0]
    assert set(pair["dropped"]) == {"n_bytes", "sha256"}


@pytest.mark.unit
def test_precision_estimate_uses_the_pairs_full_text_jaccard() -> None:
    # The excerpts held in the figures are not re-judged: d4's excerpt shares no
    # 5-shingle with its keeper, yet its full-text Jaccard (computed in Spark) is 0.95.
    prepared = prepare(_figures())
    text = prepared["modalities"]["text"]
    assert [p["jaccard"] for p in text["pairs"]] == [0.75, 0.0, 0.95]
    assert text["precision_estimate"] == {"pairs": 3, "threshold": 0.8, "precision": 1 / 3}
    assert "precision_estimate" not in prepared["modalities"]["images"]  # no jaccard
    lsh = prepared["lsh"]
    assert (lsh["bands"], lsh["rows"]) == (16, 8)
    assert lsh["p_candidate_at_threshold"] == pytest.approx(1 - (1 - 0.8**8) ** 16)


@pytest.mark.unit
def test_exact_jaccard_equals_textnorm() -> None:
    import pyarrow as pa

    pairs = [("a b c d e f g", "a b c d e f h"), ("", ""), ("one", "two words"),
             ("Émile ZOLA wrote   many books", "émile zola wrote many books"),
             ("x " * 50, "x " * 49 + "y"), ("short", ""), ("the same text here", None)]
    a = pa.array([p[0] for p in pairs])
    b = pa.array([p[1] for p in pairs])
    got = exact_jaccard(a, b, 5).tolist()
    want = [jaccard(word_shingles(x, 5), word_shingles(y or "", 5)) for x, y in pairs]
    assert got == pytest.approx(want, abs=1e-12)


@pytest.mark.unit
def test_scurve_shape() -> None:
    xs, ys = scurve(16, 8)
    assert ys[0] == 0.0 and ys[-1] == 1.0
    assert all(b >= a for a, b in itertools.pairwise(ys))
    assert len(xs) == len(ys) == 101


@pytest.mark.integration
def test_sample_pairs_and_cluster_histogram(spark) -> None:  # type: ignore[no-untyped-def]
    records = spark.createDataFrame(
        [(f"d{i}", f"text number {i} " + "x" * 2000) for i in range(8)],
        "doc_id string, text string")
    kept = spark.createDataFrame([("d0", "d0"), ("d3", "d3"), ("d5", "d5"), ("d7", "d7")],
                                 "doc_id string, cluster_id string")
    dups = spark.createDataFrame(
        [("d1", "d0", "exact", 1.0, "d0"), ("d2", "d0", "near_dup", 0.9, "d0"),
         ("d4", "d3", "near_dup", 0.85, "d3"), ("d6", "d5", "near_dup", 0.8, "d5")],
        "dropped_id string, kept_id string, rule string, similarity double, cluster_id string")
    assert cluster_size_histogram(kept, dups) == {1: 1, 2: 2, 3: 1}
    pairs = sample_pairs(dups, records, "doc_id", "text", n=2, seed=1, rules=["near_dup"])
    assert len(pairs) == 2 and all(p["rule"] == "near_dup" for p in pairs)
    assert all(p["dropped"].startswith(f"text number {p['dropped_id'][1:]} ") for p in pairs)
    assert all(len(p["kept"]) == 600 for p in pairs)  # cut on the executors
    again = sample_pairs(dups, records, "doc_id", "text", n=2, seed=1, rules=["near_dup"])
    assert [p["dropped_id"] for p in again] == [p["dropped_id"] for p in pairs]
    entry = collect_modality(kept, dups, records, id_col="doc_id", content_col="text",
                             quarantined=2, n_pairs=5)
    assert entry["counts"] == {"input": 10, "kept": 4, "quarantined": 2,
                               "duplicates": {"exact": 1, "near_dup": 3}}
    assert len(entry["pairs"]) == 3 and entry["cluster_sizes"] == {1: 1, 2: 2, 3: 1}


@pytest.mark.integration
def test_sampled_pairs_jaccard_is_on_full_texts(spark) -> None:  # type: ignore[no-untyped-def]
    # Issue 13.3: two long texts that differ only at the start are near-duplicates, yet
    # their 600-character excerpts share few shingles; the report judged the excerpts.
    common = " ".join(f"w{i}" for i in range(400))
    texts = {"a": "alpha " * 120 + common, "b": "beta " * 120 + common, "c": common,
             "d": "delta " * 120 + common}
    records = spark.createDataFrame(list(texts.items()), "doc_id string, text string")
    dups = spark.createDataFrame(
        [("b", "a", "near_dup", 0.7, "a"), ("c", "a", "near_dup", 0.7, "a"),
         ("d", "a", "exact", 1.0, "a")],
        "dropped_id string, kept_id string, rule string, similarity double, cluster_id string")
    pairs = sample_pairs(dups, records, "doc_id", "text", n=5, rules=None, jaccard_n=5)
    by_id = {p["dropped_id"]: p for p in pairs}
    for dropped in ("b", "c"):
        full = jaccard(word_shingles(texts[dropped], 5), word_shingles(texts["a"], 5))
        cut = jaccard(word_shingles(texts[dropped][:EXCERPT_CHARS], 5),
                      word_shingles(texts["a"][:EXCERPT_CHARS], 5))
        assert full > 0.9 and cut < 0.3  # the excerpts would say "not a duplicate"
        assert by_id[dropped]["jaccard"] == pytest.approx(full, abs=1e-12)
        assert len(by_id[dropped]["dropped"]) == EXCERPT_CHARS
    assert "jaccard" not in by_id["d"]  # only near-dup pairs are judged
    entry = collect_modality(spark.createDataFrame([("a", "a")], "doc_id string, "
                                                   "cluster_id string"),
                             dups, records, id_col="doc_id", content_col="text",
                             pair_rules=None, jaccard_n=5)
    estimate = prepare({"config": to_dict(DedupConfig()),
                        "modalities": {"text": entry}})["modalities"]["text"]
    assert estimate["precision_estimate"]["pairs"] == 2
