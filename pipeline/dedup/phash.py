"""Perceptual hashes of encoded images: 64-bit DCT pHash and 64-bit dHash, batched numpy.

pHash follows the classic definition (the one the `imagehash` package implements): decode,
convert to 8-bit grayscale, resize to 32x32 with Lanczos, take the 2-D DCT-II, keep the
top-left 8x8 block of low frequencies (DC term included), and set each bit to
`coefficient > median of the 64 coefficients`. dHash resizes to 9x8 and sets each bit to
`pixel[x+1] > pixel[x]` along rows. Bits are packed row-major, first bit most significant,
so the hex form of our hash equals `str(imagehash.phash(img))`.

Only decoding and resampling touch Pillow, once per image (one C call each; there is no
way to decode a batch of independently encoded files at once). Everything after that runs
on a stack of images: the DCT is two batched matrix products with a precomputed DCT matrix,
medians, comparisons and bit packing are single numpy calls over the whole batch.

Hashes are returned as signed int64 (the bit pattern of the unsigned 64-bit hash), which is
what a Spark `long` column holds.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

HASH_BITS = 64
PHASH_SIZE = 32  # imagehash: hash_size (8) x highfreq_factor (4)
LOW_FREQ = 8
_RESAMPLE = Image.Resampling.LANCZOS


def dct_matrix(n: int = PHASH_SIZE) -> np.ndarray:
    """The unnormalized DCT-II matrix `C[k, j] = 2 cos(pi (2j + 1) k / 2n)`.

    `C @ x` equals `scipy.fftpack.dct(x, type=2)` (no orthonormal scaling), which is what the
    classic pHash uses; scaling would change the DC row relative to the others and with it
    the median, so we keep the unnormalized form to stay bit-compatible.
    """
    k = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    return 2.0 * np.cos(np.pi * (2.0 * j + 1.0) * k / (2.0 * n))


_DCT = dct_matrix()
# Only the first 8 frequencies survive, so only the first 8 rows of C are needed:
# low = C8 @ X @ C8.T is a (8x32)(32x32)(32x8) product per image instead of full 32x32 DCTs.
_DCT_LOW = np.ascontiguousarray(_DCT[:LOW_FREQ])


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Pack a (B, 64) boolean array (first bit most significant) into B signed int64."""
    if bits.ndim != 2 or bits.shape[1] != HASH_BITS:
        raise ValueError(f"expected (B, {HASH_BITS}) bits, got shape {bits.shape}")
    packed = np.packbits(bits.astype(np.uint8), axis=1)  # (B, 8) bytes, big-endian bit order
    return packed.view(">u8").reshape(-1).astype(np.uint64).view(np.int64)


def unpack_bits(hashes: np.ndarray) -> np.ndarray:
    """Inverse of `pack_bits`: (B,) int64 -> (B, 64) bool."""
    as_bytes = np.asarray(hashes, dtype=np.int64).astype(">i8").view(np.uint8)
    return np.unpackbits(as_bytes.reshape(-1, 8), axis=1).astype(bool)


def phash_from_gray(gray: np.ndarray) -> np.ndarray:
    """pHash of a stack of 32x32 grayscale images, shape (B, 32, 32) -> (B,) int64."""
    x = np.asarray(gray, dtype=np.float64)
    if x.ndim != 3 or x.shape[1:] != (PHASH_SIZE, PHASH_SIZE):
        raise ValueError(f"expected (B, {PHASH_SIZE}, {PHASH_SIZE}) pixels, got {x.shape}")
    # Batched 2-D DCT-II restricted to the 8 lowest frequencies of each axis.
    low = _DCT_LOW @ x @ _DCT_LOW.T  # (B, 8, 8)
    flat = low.reshape(len(x), -1)
    med = np.median(flat, axis=1, keepdims=True)
    return pack_bits(flat > med)


def dhash_from_gray(gray: np.ndarray) -> np.ndarray:
    """dHash of a stack of 8-row x 9-column grayscale images, (B, 8, 9) -> (B,) int64."""
    x = np.asarray(gray, dtype=np.int16)
    if x.ndim != 3 or x.shape[1:] != (LOW_FREQ, LOW_FREQ + 1):
        raise ValueError(f"expected (B, {LOW_FREQ}, {LOW_FREQ + 1}) pixels, got {x.shape}")
    return pack_bits((x[:, :, 1:] > x[:, :, :-1]).reshape(len(x), -1))


def _gray_thumbs(data: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode one encoded image and resample it to the two hash inputs, or None if broken.

    This is the unavoidable per-image step: each file is a separate compressed stream.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                gray = im.convert("L")
        p = np.asarray(gray.resize((PHASH_SIZE, PHASH_SIZE), _RESAMPLE), dtype=np.uint8)
        d = np.asarray(gray.resize((LOW_FREQ + 1, LOW_FREQ), _RESAMPLE), dtype=np.uint8)
        return p, d
    except Exception:  # a corrupt file must not fail the batch; its hash is null instead
        return None


def hash_images(blobs: Sequence[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pHash and dHash of a batch of encoded images.

    Returns `(phash, dhash, ok)`: two (B,) int64 arrays and a (B,) bool mask that is False
    where the bytes were missing or could not be decoded (their hashes are 0 there).
    """
    n = len(blobs)
    p_stack = np.zeros((n, PHASH_SIZE, PHASH_SIZE), dtype=np.uint8)
    d_stack = np.zeros((n, LOW_FREQ, LOW_FREQ + 1), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    for i, data in enumerate(blobs):
        thumbs = _gray_thumbs(data) if data is not None else None
        if thumbs is not None:
            p_stack[i], d_stack[i] = thumbs
            ok[i] = True
    phash = np.where(ok, phash_from_gray(p_stack), 0) if n else np.zeros(0, np.int64)
    dhash = np.where(ok, dhash_from_gray(d_stack), 0) if n else np.zeros(0, np.int64)
    return phash.astype(np.int64), dhash.astype(np.int64), ok


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each 64-bit integer (vectorized)."""
    u = np.asarray(x).astype(np.int64).view(np.uint64)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: one hardware popcount per element
        return np.bitwise_count(u).astype(np.int64)
    # SWAR fallback: sum bits in 2-, 4-, 8-bit lanes, then add the bytes with a multiply.
    u = u - ((u >> np.uint64(1)) & np.uint64(0x5555555555555555))
    u = (u & np.uint64(0x3333333333333333)) + ((u >> np.uint64(2)) & np.uint64(0x3333333333333333))
    u = (u + (u >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((u * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def hamming(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Element-wise Hamming distance between 64-bit hashes (broadcasting like numpy)."""
    return popcount64(np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)))


def band_layout(max_hamming: int) -> list[tuple[int, int]]:
    """(shift, width) of each of the `max_hamming + 1` bit bands that split a 64-bit hash.

    Pigeonhole: two hashes within Hamming distance k differ in at most k bits, which touch
    at most k of the k + 1 disjoint bands, so at least one band is bit-identical. Grouping by
    (band index, band value) therefore finds every pair within k, with no false negatives.
    Widths are as equal as possible: the first `64 % (k+1)` bands get one extra bit; for
    the default k = 6 that is one band of 10 bits and six of 9 bits. Bands are taken from
    the most significant end (shift counts from the least significant bit).
    """
    n = max_hamming + 1
    if not 1 <= n <= HASH_BITS:
        raise ValueError(f"max_hamming must be in [0, {HASH_BITS - 1}], got {max_hamming}")
    base, extra = divmod(HASH_BITS, n)
    layout, top = [], HASH_BITS
    for i in range(n):
        width = base + (1 if i < extra else 0)
        top -= width
        layout.append((top, width))
    return layout


def hex_hash(value: int) -> str:
    """16-digit hex form of a signed 64-bit hash (as imagehash prints it)."""
    return f"{int(value) & 0xFFFFFFFFFFFFFFFF:016x}"
