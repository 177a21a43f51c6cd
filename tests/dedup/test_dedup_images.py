"""Image dedup: exact bytes, equal pixels, pHash near-duplicates, keep rule, cluster ids."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pyspark.sql import functions as F

from pipeline.config import DedupConfig
from pipeline.dedup import phash as ph
from pipeline.dedup.images import image_dedup, near_pairs
from pipeline.synth.images import CLASSES, draw_image, encode

pytestmark = pytest.mark.integration

SCHEMA = ("image_id string, source string, bytes binary, format string, width int, "
          "height int, channels int, content_hash string, pixel_hash string, label string")


def image_row(image_id: str, data: bytes, label: str) -> tuple[Any, ...]:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        pixels = hashlib.sha256(f"{im.mode}|{im.size}|".encode() + im.tobytes()).hexdigest()
        return (image_id, f"file:///raw/images/{label}/{image_id}.{im.format.lower()}", data,
                im.format, im.width, im.height, len(im.getbands()),
                hashlib.sha256(data).hexdigest(), pixels, label)


def _png(im: Image.Image, level: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


@pytest.fixture(scope="module")
def planted() -> dict[str, Any]:
    rng = np.random.default_rng(42)
    base = [draw_image(rng, CLASSES[i % 4]).convert("RGB") for i in range(8)]
    rows = [image_row(f"img-{10 + i:03d}", encode(im, "PNG"), CLASSES[i % 4])
            for i, im in enumerate(base)]
    small = base[1].resize((base[1].width * 2 // 3, base[1].height * 2 // 3),
                           Image.Resampling.LANCZOS)
    rows += [
        image_row("img-050", rows[0][2], CLASSES[0]),             # byte copy of img-010
        image_row("img-051", rows[0][2], CLASSES[0]),             # another byte copy
        image_row("img-052", _png(base[2], 1), CLASSES[2]),      # same pixels as img-012
        image_row("img-053", encode(base[3], "JPEG", 70), CLASSES[3]),  # re-encode of 013
        image_row("img-001", encode(small, "PNG"), CLASSES[1]),   # resize of 011, smaller id
        image_row("img-054", encode(small, "PNG"), CLASSES[1]),   # byte copy of the resize
    ]
    # Equal pixels and size: the larger file wins (compress_level 1 beats the default 6).
    by_id = {r[0]: r for r in rows}
    assert len(by_id["img-052"][2]) > len(by_id["img-012"][2])
    expect = {  # dropped -> (kept, rule)
        "img-050": ("img-010", "exact"), "img-051": ("img-010", "exact"),
        "img-012": ("img-052", "pixels"), "img-053": ("img-013", "near_dup"),
        "img-001": ("img-011", "near_dup"), "img-054": ("img-011", "exact"),
    }
    return {"rows": rows, "expect": expect}


@pytest.fixture(scope="module")
def result(spark, planted):  # type: ignore[no-untyped-def]
    images = spark.createDataFrame(planted["rows"], SCHEMA)
    res = image_dedup(spark, images, DedupConfig())
    out = {"kept": {r["image_id"]: r.asDict() for r in res.kept.collect()},
           "dups": {r["dropped_id"]: r.asDict() for r in res.duplicates.collect()},
           "pairs": [r.asDict() for r in res.pairs.collect()], "res": res, "images": images}
    yield out
    res.release()


def test_counts_reconcile(result, planted) -> None:  # type: ignore[no-untyped-def]
    assert len(result["kept"]) + len(result["dups"]) == len(planted["rows"])
    assert set(result["kept"]).isdisjoint(result["dups"])


def test_rules_and_kept_copies(result, planted) -> None:  # type: ignore[no-untyped-def]
    got = {d: (row["kept_id"], row["rule"]) for d, row in result["dups"].items()}
    assert got == planted["expect"]
    for row in result["dups"].values():
        assert row["kept_id"] in result["kept"]


def test_highest_resolution_copy_is_kept(result) -> None:  # type: ignore[no-untyped-def]
    # img-001 (the 2/3 resize) has the smallest id, but img-011 has more pixels.
    assert "img-011" in result["kept"] and "img-001" not in result["kept"]
    kept = result["kept"]["img-011"]
    assert kept["width"] * kept["height"] > 0


def test_cluster_id_is_smallest_member(result) -> None:  # type: ignore[no-untyped-def]
    kept, dups = result["kept"], result["dups"]
    assert kept["img-011"]["cluster_id"] == "img-001"
    assert dups["img-054"]["cluster_id"] == dups["img-001"]["cluster_id"] == "img-001"
    assert kept["img-010"]["cluster_id"] == "img-010"
    for image_id, row in kept.items():
        members = [image_id] + [d for d, r in dups.items() if r["kept_id"] == image_id]
        assert row["cluster_id"] == min(members)


def test_similarity_values(result) -> None:  # type: ignore[no-untyped-def]
    k = DedupConfig().phash_max_hamming
    for row in result["dups"].values():
        if row["rule"] == "near_dup":
            kept = result["kept"][row["kept_id"]]
            assert row["similarity"] >= 1 - k / 64
            assert 0.0 <= row["similarity"] <= 1.0 and kept["phash"] is not None
        else:
            assert row["similarity"] == 1.0


def test_hash_columns_match_numpy(result, planted) -> None:  # type: ignore[no-untyped-def]
    kept = result["kept"]
    assert dict(result["res"].kept.dtypes)["phash"] == "bigint"
    by_id = {r[0]: r[2] for r in planted["rows"]}
    ids = sorted(kept)
    p, d, _ = ph.hash_images([by_id[i] for i in ids])
    assert [kept[i]["phash"] for i in ids] == p.tolist()
    assert [kept[i]["dhash"] for i in ids] == d.tolist()


def test_pairs_are_verified_and_listed_once(result) -> None:  # type: ignore[no-untyped-def]
    pairs = result["pairs"]
    keys = [(p["a_id"], p["b_id"]) for p in pairs]
    assert len(keys) == len(set(keys)) and all(a < b for a, b in keys)
    assert ("img-013", "img-053") in keys and ("img-001", "img-011") in keys
    assert all(p["hamming"] <= DedupConfig().phash_max_hamming for p in pairs)


def test_band_join_finds_exactly_the_brute_force_pairs(spark) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    base = rng.integers(-(2**63), 2**63 - 1, size=40, dtype=np.int64)
    # Planted neighbours: flip 0..8 random bits of each base hash.
    flips = [base[i] ^ np.int64(sum(1 << int(b) for b in rng.choice(63, size=i % 9,
                                                                        replace=False)))
             for i in range(40)]
    hashes = np.concatenate([base, np.array(flips, dtype=np.int64)])
    ids = [f"h{i:03d}" for i in range(len(hashes))]
    # dHash: 0 for the first 60 rows, all ones after, so the dHash check separates the
    # planted pairs (i, 40 + i) with i >= 20.
    dhash = [0 if i < 60 else -1 for i in range(len(ids))]
    df = spark.createDataFrame([(i, int(h), d) for i, h, d in zip(ids, hashes, dhash,
                                                                  strict=True)],
                               "image_id string, phash long, dhash long")
    dist = ph.hamming(hashes[:, None], hashes[None, :])
    for k in (0, 3, 6):
        got = {(r["a_id"], r["b_id"]) for r in near_pairs(df, k).collect()}
        want = {(ids[i], ids[j]) for i in range(len(ids)) for j in range(len(ids))
                if ids[i] < ids[j] and dist[i, j] <= k}
        assert got == want and want
    got = {(r["a_id"], r["b_id"]) for r in near_pairs(df, 6, dhash_max_hamming=6).collect()}
    want = {(ids[i], ids[j]) for i in range(len(ids)) for j in range(len(ids))
            if ids[i] < ids[j] and dist[i, j] <= 6 and (i < 60) == (j < 60)}
    assert got == want and want
    assert len(want) < len({(a, b) for a, b in want} | {(ids[i], ids[40 + i])
                                                        for i in range(20, 40)
                                                        if dist[i, 40 + i] <= 6})


def test_deterministic_under_reordering(spark, result) -> None:  # type: ignore[no-untyped-def]
    shuffled = result["images"].orderBy(F.rand(3)).repartition(3)
    res = image_dedup(spark, shuffled, DedupConfig())
    try:
        kept = {r["image_id"]: r["cluster_id"] for r in res.kept.collect()}
        dups = {r["dropped_id"]: r.asDict() for r in res.duplicates.collect()}
    finally:
        res.release()
    assert kept == {i: r["cluster_id"] for i, r in result["kept"].items()}
    assert dups == result["dups"]
