"""pHash/dHash: bit-exact with the classic definition, robust to re-encodes, vectorized Hamming."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DedupConfig
from pipeline.dedup import phash as ph
from pipeline.synth.images import CLASSES, draw_image, encode

pytestmark = pytest.mark.unit


def _classic_phash(pixels: np.ndarray) -> int:
    """The textbook definition, written as loops: DCT-II sums, 8x8 low block, > median."""
    n = pixels.shape[0]
    x = pixels.astype(np.float64)
    coef = np.zeros((8, 8))
    for u in range(8):
        for v in range(8):
            total = 0.0
            for i in range(n):
                for j in range(n):
                    total += (x[i, j] * math.cos(math.pi * (2 * i + 1) * u / (2 * n))
                              * math.cos(math.pi * (2 * j + 1) * v / (2 * n)))
            coef[u, v] = 4.0 * total  # scipy's unnormalized DCT-II: factor 2 per axis
    med = float(np.median(coef))
    value = 0
    for bit in (coef > med).reshape(-1):
        value = (value << 1) | int(bit)
    return value


def _as_unsigned(h: int) -> int:
    return int(h) & 0xFFFFFFFFFFFFFFFF


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _natural(seed: int, label: str = "circle") -> Image.Image:
    return draw_image(np.random.default_rng(seed), label).convert("RGB")


def test_dct_matrix_matches_cosine_sum() -> None:
    x = np.random.default_rng(3).normal(size=32)
    direct = [2 * sum(x[j] * math.cos(math.pi * (2 * j + 1) * k / 64) for j in range(32))
              for k in range(32)]
    np.testing.assert_allclose(ph.dct_matrix() @ x, direct, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("kind", ["ramp", "disc", "noise"])
def test_phash_matches_classic_definition_on_handmade_arrays(kind: str) -> None:
    # Asymmetric patterns on purpose: symmetric ones (checkerboards, linear ramps) have
    # coefficients that are exactly 0 in theory, and rounding noise decides `> median`.
    yy, xx = np.mgrid[0:32, 0:32]
    arrays = {
        "ramp": (xx * 7 + yy * yy // 3 + 5) % 256,
        "disc": np.where((xx - 11) ** 2 + (yy - 19) ** 2 < 60, 230, 25 + xx),
        "noise": np.random.default_rng(11).integers(0, 256, size=(32, 32)),
    }
    pixels = arrays[kind].astype(np.uint8)
    ours = ph.phash_from_gray(pixels[None])[0]
    assert _as_unsigned(ours) == _classic_phash(pixels)


def test_dhash_matches_definition() -> None:
    pixels = np.random.default_rng(5).integers(0, 256, size=(8, 9)).astype(np.uint8)
    expected = 0
    for r in range(8):
        for c in range(8):
            expected = (expected << 1) | int(pixels[r, c + 1] > pixels[r, c])
    assert _as_unsigned(ph.dhash_from_gray(pixels[None])[0]) == expected


def test_pack_unpack_round_trip_and_sign() -> None:
    bits = np.random.default_rng(1).random((50, 64)) < 0.5
    bits[0] = True  # all ones -> -1 as a signed long
    packed = ph.pack_bits(bits)
    assert packed.dtype == np.int64 and packed[0] == -1
    np.testing.assert_array_equal(ph.unpack_bits(packed), bits)


def test_identical_images_hash_identically() -> None:
    data = _png(_natural(0))
    p, d, ok = ph.hash_images([data, data])
    assert ok.all() and p[0] == p[1] and d[0] == d[1]
    assert int(ph.hamming(p[0], p[1])) == 0


def test_resize_and_reencode_stay_within_threshold() -> None:
    limit = DedupConfig().phash_max_hamming
    worst = 0
    for seed in range(12):
        im = _natural(seed, CLASSES[seed % len(CLASSES)])
        variants = [
            encode(im, "PNG"),
            encode(im, "JPEG", 70),
            encode(im.resize((max(8, im.width * 2 // 3), max(8, im.height * 2 // 3)),
                             Image.Resampling.LANCZOS), "PNG"),
        ]
        p, _, ok = ph.hash_images(variants)
        assert ok.all()
        worst = max(worst, int(ph.hamming(p[0], p[1:]).max()))
    assert worst <= limit


def test_different_images_are_far_apart() -> None:
    blobs = [encode(_natural(100 + i, CLASSES[i % len(CLASSES)]), "PNG") for i in range(16)]
    p, _, _ = ph.hash_images(blobs)
    dist = ph.hamming(p[:, None], p[None, :])
    off_diag = dist[~np.eye(len(p), dtype=bool)]
    # Unrelated images share about half their bits; none should look like a re-encode.
    assert off_diag.min() > DedupConfig().phash_max_hamming
    assert 20 <= float(np.median(off_diag)) <= 44


def test_broken_bytes_are_masked_not_raised() -> None:
    good = _png(_natural(2))
    p, d, ok = ph.hash_images([good, b"not an image", None, good[: len(good) // 3]])
    assert ok.tolist()[:3] == [True, False, False]
    assert p[1] == 0 and d[2] == 0


def test_popcount_and_hamming_vectorized() -> None:
    rng = np.random.default_rng(7)
    a = rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64)
    b = rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64)
    expected = [bin(_as_unsigned(x) ^ _as_unsigned(y)).count("1")
                for x, y in zip(a, b, strict=True)]
    assert ph.hamming(a, b).tolist() == expected
    assert ph.popcount64(np.array([-1, 0, 1], dtype=np.int64)).tolist() == [64, 0, 1]


@pytest.mark.parametrize("k", [0, 1, 6, 10, 63])
def test_band_layout_covers_all_bits_and_pigeonholes(k: int) -> None:
    layout = ph.band_layout(k)
    assert len(layout) == k + 1
    covered = sorted(bit for shift, width in layout for bit in range(shift, shift + width))
    assert covered == list(range(64))
    widths = [w for _, w in layout]
    assert max(widths) - min(widths) <= 1
    # Flip k random bits: some band must be untouched.
    rng = np.random.default_rng(k)
    flipped = set(rng.choice(64, size=k, replace=False).tolist())
    assert any(not flipped & set(range(s, s + w)) for s, w in layout)


def test_band_layout_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        ph.band_layout(64)
