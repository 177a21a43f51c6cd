"""Shingle hashing, MinHash, band hashes and S-curve helpers (numpy only, no Spark)."""

from __future__ import annotations

import re
from pydoc_data.topics import topics

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.dedup import minhash as mh
from pipeline.textnorm import jaccard, normalize_text, word_shingles

pytestmark = pytest.mark.unit

TRICKY = [
    "",
    "one",
    "two words",
    "exactly five words right here",
    "exactly six words are right here",
    "Repeated repeated REPEATED repeated repeated repeated repeated words",
    "the the the the the the the the the the",
    "ΟΔΟΣ ΑΣ ΣΑΣ Σ final sigma ΟΔΟΣ.",
    "İstanbul İZMİR dotted capital I",
    "Straße ǅemal ﬁnance ꟋX newer letters",
    "日本語 の テキスト 😀 emoji 👍🏽 combining é e\u0301",
    " leading space",
    "trailing space ",
    "double  space inside  here",
    " ",
    "   ",
]


def _reference(text: str | None, n: int) -> set[int]:
    return {mh.shingle_hash(s) for s in word_shingles(text or "", n)}


def _doc_sets(texts: list[str | None], n: int, **kw: int) -> list[set[int]]:
    hashes, offsets = mh.shingle_hashes(pa.array(texts, pa.string()), n, **kw)
    assert len(offsets) == len(texts) + 1
    return [set(hashes[offsets[i]:offsets[i + 1]].tolist()) for i in range(len(texts))]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shingle_hashes_equal_word_shingles_on_tricky_texts(n: int) -> None:
    texts: list[str | None] = [*TRICKY, None]
    got = _doc_sets(texts, n)
    for text, hashes in zip(texts, got, strict=True):
        assert hashes == _reference(text, n), repr(text)
    # The mapping shingle -> hash is injective here, so equal hash sets are equal sets.
    shingles = set().union(*(word_shingles(t or "", n) for t in texts))
    assert len({mh.shingle_hash(s) for s in shingles}) == len(shingles)


def test_chunking_does_not_change_hashes() -> None:
    texts = [normalize_text(v)[:3000] for v in list(topics.values())[:30]]
    whole = _doc_sets(texts, 5)
    assert _doc_sets(texts, 5, chunk_bytes=700) == whole
    assert whole == [_reference(t, 5) for t in texts]


_ALPHABET = st.sampled_from(list("ab Σσς İi日 é\u0301ABC"))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(_ALPHABET, max_size=40), min_size=1, max_size=8),
       st.integers(1, 6))
def test_shingle_hashes_match_reference_property(texts: list[str], n: int) -> None:
    assert _doc_sets(list(texts), n) == [_reference(t, n) for t in texts]


def test_lower_utf8_matches_python_lower() -> None:
    texts = [*TRICKY, "MiXeD ASCII ONLY"]
    data, offsets = mh.lower_utf8(pa.array(texts))
    for i, text in enumerate(texts):
        assert bytes(data[offsets[i]:offsets[i + 1]]).decode("utf-8") == text.lower()


def _sets_with_jaccard(rng: np.random.Generator, j: float, size: int = 400
                       ) -> tuple[np.ndarray, np.ndarray, float]:
    # |A| = |B| = size, |A & B| = k  =>  J = k / (2 size - k)
    k = round(2 * size * j / (1 + j))
    pool = rng.choice(np.iinfo(np.int64).max, size=2 * size - k, replace=False).astype(np.uint64)
    return pool[:size], pool[size - k:], k / (2 * size - k)


@pytest.mark.parametrize("j", [0.2, 0.5, 0.8, 0.95])
def test_signature_agreement_estimates_jaccard(j: float) -> None:
    rng = np.random.default_rng(7)
    num_perm, trials = 256, 25
    a, b = mh.perm_params(num_perm, seed=3)
    estimates, truths = [], []
    for _ in range(trials):
        set_a, set_b, true_j = _sets_with_jaccard(rng, j)
        hashes = np.concatenate([set_a, set_b])
        sig = mh.minhash_from_hashes(hashes, np.array([0, len(set_a), len(hashes)]), a, b)
        estimates.append(mh.signature_agreement(sig[:1], sig[1:])[0])
        truths.append(true_j)
    sigma = np.sqrt(j * (1 - j) / num_perm)  # binomial sd of one estimate
    errors = np.array(estimates) - np.array(truths)
    assert np.all(np.abs(errors) < 5 * sigma)
    assert abs(errors.mean()) < 4 * sigma / np.sqrt(trials)


def test_signatures_independent_of_chunking_and_empty_docs() -> None:
    texts = [normalize_text(v)[:2000] for v in list(topics.values())[:20]]
    texts[3] = ""
    hasher = mh.MinHasher(num_perm=64, shingle_n=5, seed=9)
    hashes, offsets = mh.shingle_hashes(pa.array(texts), 5)
    a, b = mh.perm_params(64, 9)
    small = mh.minhash_from_hashes(hashes, offsets, a, b, chunk_shingles=50)
    full = hasher.signatures(pa.array(texts))
    np.testing.assert_array_equal(small, full)
    assert np.all(full[3] == mh.EMPTY_SLOT)
    assert np.all(full[np.arange(len(texts)) != 3] < mh.EMPTY_SLOT)


def test_band_hashes_change_only_in_the_edited_band() -> None:
    rng = np.random.default_rng(0)
    sig = rng.integers(0, mh.MERSENNE_61, size=(50, 128), dtype=np.uint64)
    edited = sig.copy()
    edited[:, 8 * 5 + 3] ^= np.uint64(1)  # one slot inside band 5
    ba, bb = mh.band_hashes(sig, 16, 8), mh.band_hashes(edited, 16, 8)
    assert ba.shape == (50, 16) and ba.dtype == np.int64
    differs = ba != bb
    assert differs[:, 5].all()
    assert not np.delete(differs, 5, axis=1).any()
    with pytest.raises(ValueError, match="exceed"):
        mh.band_hashes(sig, 16, 9)


def test_candidate_rate_follows_the_s_curve() -> None:
    """Pairs at Jaccard j share a band at the rate 1 - (1 - j^r)^b."""
    rng = np.random.default_rng(11)
    a, b = mh.perm_params(128, seed=1)
    for j in (0.5, 0.7, 0.8):
        hits, trials = 0, 300
        for _ in range(trials):
            set_a, set_b, _ = _sets_with_jaccard(rng, j, size=150)
            hashes = np.concatenate([set_a, set_b])
            sig = mh.minhash_from_hashes(hashes, np.array([0, len(set_a), len(hashes)]), a, b)
            bands = mh.band_hashes(sig, 16, 8)
            hits += bool((bands[0] == bands[1]).any())
        p = float(mh.s_curve(j, 16, 8))
        assert abs(hits / trials - p) < 4 * np.sqrt(p * (1 - p) / trials) + 0.01


def _area_error(b: int, r: int, t: float, wfp: float, wfn: float) -> float:
    # Independent midpoint-rule integration of the same objective.
    xs = (np.arange(20000) + 0.5) / 20000
    s = 1 - (1 - xs**r) ** b
    return float(wfp * np.sum(np.where(xs < t, s, 0)) / 20000
                 + wfn * np.sum(np.where(xs >= t, 1 - s, 0)) / 20000)


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_choose_bands_minimizes_the_weighted_error(threshold: float) -> None:
    b, r = mh.choose_bands(threshold, 128)
    assert b * r <= 128
    best = _area_error(b, r, threshold, 0.5, 0.5)
    for bb in range(1, 129):
        for rr in range(1, 128 // bb + 1):
            assert best <= _area_error(bb, rr, threshold, 0.5, 0.5) + 1e-4
    # Weighting misses more pushes the curve's threshold-point probability up.
    b2, r2 = mh.choose_bands(threshold, 128, fp_weight=0.1, fn_weight=0.9)
    assert mh.s_curve(threshold, b2, r2) > mh.s_curve(threshold, b, r)


def test_choose_bands_agrees_with_datasketch() -> None:
    lsh = pytest.importorskip("datasketch.lsh")
    for threshold in (0.7, 0.8, 0.9):
        assert mh.choose_bands(threshold, 128) == lsh._optimal_param(threshold, 128, 0.5, 0.5)


def test_s_curve_shape() -> None:
    js = np.linspace(0, 1, 101)
    s = mh.s_curve(js, 16, 8)
    assert s[0] == 0.0 and s[-1] == 1.0
    assert np.all(np.diff(s) >= 0)


def _sentences() -> list[str]:
    text = normalize_text(" ".join(topics.values()))
    return [s for s in re.split(r"(?<=[.!?]) ", text) if len(s.split(" ")) >= 6]


def test_exact_and_estimated_jaccard_of_real_pairs() -> None:
    rng = np.random.default_rng(5)
    sents = _sentences()
    texts_a, texts_b = [], []
    for _ in range(40):
        picks = rng.choice(len(sents), size=12, replace=False)
        a_doc = [sents[i] for i in picks]
        b_doc = a_doc[: rng.integers(4, 12)] + [sents[i] for i in rng.choice(len(sents), 3)]
        texts_a.append(" ".join(a_doc))
        texts_b.append(" ".join(b_doc))
    texts_a.append("")
    texts_b.append("")
    hasher = mh.MinHasher(num_perm=128, shingle_n=5, seed=1)
    est, exact = mh.pair_similarity(pa.array(texts_a), pa.array(texts_b), hasher)
    assert exact is not None
    truth = np.array([jaccard(word_shingles(x), word_shingles(y))
                      for x, y in zip(texts_a, texts_b, strict=True)])
    np.testing.assert_allclose(exact, truth, rtol=0, atol=1e-12)
    sigma = np.sqrt(truth * (1 - truth) / 128)
    assert np.all(np.abs(est - truth) < 5 * sigma + 1e-9)
    _, none = mh.pair_similarity(pa.array(texts_a), pa.array(texts_b), hasher, exact=False)
    assert none is None


def test_signatures_equal_the_universal_hash_minimum() -> None:
    """Each slot is min over shingles of (a_i * x + b_i) mod (2^61 - 1), x = hash >> 32."""
    rng = np.random.default_rng(2)
    hashes = rng.integers(0, np.iinfo(np.int64).max, size=60, dtype=np.int64).astype(np.uint64)
    hashes[:5] |= np.uint64(1 << 63)  # top bits set: the largest keys
    offsets = np.array([0, 1, 25, 60])
    a, b = mh.perm_params(16, seed=4)
    sig = mh.minhash_from_hashes(hashes, offsets, a, b)
    p = mh.MERSENNE_61
    for d in range(3):
        keys = [int(h) >> 32 for h in hashes[offsets[d]:offsets[d + 1]]]
        want = [min((int(ai) * k + int(bi)) % p for k in keys) for ai, bi in zip(a, b, strict=True)]
        assert [int(v) % p for v in sig[d]] == want
