"""Shingle hashing, MinHash signatures and LSH band hashes, vectorized over Arrow batches.

Pure numpy/pyarrow: no Spark here, so the same code runs inside `mapInArrow` on executors
and as the one-process "plain numpy path" of `bench/dedup_text.py`.

Shingles follow `pipeline.textnorm.word_shingles` exactly: the text is lower-cased with
Python's own `str.lower` (pyarrow's `utf8_lower` differs on e.g. final sigma and dotted I),
split on single spaces, and every run of `n` consecutive words is one shingle; a document of
fewer than `n` words is one shingle of all its words. A word n-gram is a contiguous byte
range of the lower-cased UTF-8 text, so each shingle is hashed straight from a polynomial
prefix hash of the whole batch's byte buffer (base B, odd, so B is invertible mod 2^64):

    Q[k] = sum_{j<k} (byte[j] + 1) * B^j            (cumprod + cumsum, wrapping uint64)
    poly(s, e) = (Q[e] - Q[s]) * B^-s = sum_t (byte[s+t] + 1) * B^t

then mixed with its length through the murmur3 finalizer (`shingle_hash` is the scalar
reference). No Python loop runs per document, word or shingle.

MinHash uses the universal family h_i(x) = (a_i * x + b_i) mod (2^61 - 1), a_i in [1, p),
b_i in [0, p) drawn from the seed, on the top 32 bits x of each shingle hash. The product is
exact in uint64 without 128-bit arithmetic by splitting a_i = hi * 2^31 + lo: lo * x < 2^63,
hi * x < 2^62, and hi * x * 2^31 folds mod p since 2^61 = 1 (mod p); values end in
[0, p + 7], a fixed function of x, which is all a minimum needs. (A multiplier limited to
32 bits would avoid the split but wrap a * x around p only a few times, which makes the
minimum favour shingles after wide gaps: estimates off by 0.2 and more in our tests.) The
32-bit key is what datasketch uses too; two documents' shingles collide on it with
probability ~ |A||B| / 2^32, far below the estimator's noise.
Exact (verification) Jaccard uses the full 64-bit hashes.

Band choice (`choose_bands`, minimizing equal-weighted false-positive and false-negative
areas of the S-curve 1 - (1 - J^r)^b around the threshold, as datasketch's `_optimal_param`)
gives b=9, r=13 for threshold 0.8 and 128 permutations; the config default is b=16, r=8.
Probability that a pair becomes a candidate:

    J          0.5     0.7     0.8     0.85    0.9
    9 x 13     0.001   0.084   0.399   0.686   0.929
    16 x 8     0.061   0.613   0.947   0.994   1.000

9 x 13 misses 31% of the pairs at J = 0.85 before verification can see them; 16 x 8
finds 99.4% at 0.85 and 94.7% at the threshold itself, and its extra false candidates at
J ~ 0.5-0.7 are removed by the exact-Jaccard verification. With verification on (the
default) recall is what matters, so 16 x 8 is the recommended default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import DedupConfig

U64 = np.uint64
MERSENNE_61 = (1 << 61) - 1
# Signature value of a document with no shingles (never produced by a real shingle).
EMPTY_SLOT = np.iinfo(np.uint64).max
_MASK64 = (1 << 64) - 1
_BASE = 0x100000001B3  # odd, so it has an inverse mod 2^64
_BASE_INV = pow(_BASE, -1, 1 << 64)
_LEN_MIX = 0x9E3779B97F4A7C15
# Text per chunk: the prefix-hash arrays cost ~32 bytes per text byte, the signature
# buffers 16 bytes per shingle, so a 1 MiB chunk stays around 50 MB of temporaries.
CHUNK_BYTES = 1 << 20


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer, in place on a uint64 array (wrapping multiply)."""
    x ^= x >> U64(33)
    x *= U64(0xFF51AFD7ED558CCD)
    x ^= x >> U64(33)
    x *= U64(0xC4CEB9FE1A85EC53)
    x ^= x >> U64(33)
    return x


def shingle_hash(shingle: str) -> int:
    """Scalar reference for the 64-bit hash of one shingle string (tests and tools)."""
    data = shingle.encode("utf-8")
    acc, power = 0, 1
    for byte in data:
        acc = (acc + (byte + 1) * power) & _MASK64
        power = (power * _BASE) & _MASK64
    arr = np.array([(acc + len(data) * _LEN_MIX) & _MASK64], dtype=U64)
    return int(_fmix64(arr)[0])


@functools.cache
def _python_only_chars() -> str:
    """An RE2 class of the characters whose lower case pyarrow's `utf8_lower` (utf8proc)
    gets different from Python's `str.lower`: dotted capital I (two code points in Python),
    capital sigma (context-dependent final form) and letters the two Unicode versions
    disagree on. Computed once per process (~10 ms) from both libraries, so it tracks the
    installed versions; planes 2+ hold no cased letters."""
    special = (0x130, 0x3A3)
    cps = np.concatenate([np.arange(0x80, 0xD800), np.arange(0xE000, 0x20000)]).astype(
        np.uint32)
    cps = cps[~np.isin(cps, special)]
    text = cps.tobytes().decode("utf-32-le")
    py = np.frombuffer(text.lower().encode("utf-32-le"), np.uint32)
    # In pieces: pyarrow lowers one 130k-character string ~1000x slower than 130 short ones.
    pieces = pa.array([text[i : i + 1000] for i in range(0, len(text), 1000)])
    arrow = np.frombuffer("".join(pc.utf8_lower(pieces).to_pylist()).encode("utf-32-le"),
                          np.uint32)
    if len(py) == len(arrow):
        differ = cps[py != arrow]
    else:  # a new one-to-many mapping: compare character by character
        chars = [chr(c) for c in cps]
        lowered = pc.utf8_lower(pa.array(chars)).to_pylist()
        differ = np.array([ord(c) for c, lo in zip(chars, lowered, strict=True)
                           if c.lower() != lo], np.uint32)
    return "[" + "".join(f"\\x{{{int(c):X}}}" for c in (*special, *differ)) + "]"


def lower_utf8(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Lower-cased UTF-8 bytes of a string array and its int64 offsets (len + 1).

    Equal to Python's `text.lower()` for every text (what `word_shingles` does). Nulls
    become empty strings. pyarrow lowers the batch; the rare texts holding a character on
    which it disagrees with Python are lowered by Python instead.
    """
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(texts.cast(pa.large_string()), "")
    if pc.all(pc.string_is_ascii(texts)).as_py() is not False:
        lowered = pc.ascii_lower(texts)
    else:
        lowered = pc.utf8_lower(texts)
        risky = pc.match_substring_regex(texts, _python_only_chars())
        if pc.any(risky).as_py():
            fixed = [t.lower() for t in pc.filter(texts, risky).to_pylist()]
            lowered = pc.replace_with_mask(lowered, risky, pa.array(fixed, pa.large_string()))
    n = len(lowered)
    if n == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    offsets = np.frombuffer(lowered.buffers()[1], np.int64)[lowered.offset : lowered.offset + n + 1]
    if offsets[-1] == offsets[0]:
        return np.zeros(0, np.uint8), offsets - offsets[0]
    data = np.frombuffer(lowered.buffers()[2], np.uint8)
    return data[offsets[0] : offsets[-1]], offsets - offsets[0]


def _powers_of(base: int, n: int) -> np.ndarray:
    powers = np.full(n, base, U64)
    powers[0] = 1
    return np.cumprod(powers, dtype=U64)  # wraps mod 2^64, as intended


@dataclass
class _Powers:
    """Cached B^j and B^-j for j < size, grown on demand (one table per process)."""

    fwd: np.ndarray = field(default_factory=lambda: np.ones(1, U64))
    inv: np.ndarray = field(default_factory=lambda: np.ones(1, U64))

    def get(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if len(self.fwd) < size:
            n = max(size, CHUNK_BYTES + 1, 2 * len(self.fwd))
            self.fwd = _powers_of(_BASE, n)
            self.inv = _powers_of(_BASE_INV, n)
        return self.fwd[:size], self.inv[:size]


_POWERS = _Powers()


def _chunk_shingles(data: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Shingle hashes (uint64) of the documents in one chunk and their counts per doc."""
    lengths = np.diff(offsets)
    spaces = np.flatnonzero(data == 32)
    nonempty = lengths > 0
    n_words = np.where(nonempty, np.diff(np.searchsorted(spaces, offsets)) + 1, 0)
    first_word = np.concatenate([[0], np.cumsum(n_words)[:-1]])
    total_words = int(n_words.sum())
    # Word i starts after the previous space or at its document's start; ends likewise.
    is_first = np.zeros(total_words, bool)
    is_first[first_word[nonempty]] = True
    is_last = np.zeros(total_words, bool)
    is_last[(first_word + n_words - 1)[nonempty]] = True
    starts = np.empty(total_words, np.int64)
    starts[is_first] = offsets[:-1][nonempty]
    starts[~is_first] = spaces + 1
    ends = np.empty(total_words, np.int64)
    ends[is_last] = offsets[1:][nonempty]
    ends[~is_last] = spaces
    counts = np.where(n_words >= n, n_words - n + 1, nonempty.astype(np.int64))
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, U64), counts
    first_sh = np.cumsum(counts) - counts
    k = np.arange(total, dtype=np.int64) - np.repeat(first_sh, counts)
    first_w = np.repeat(first_word, counts) + k
    last_w = first_w + np.repeat(np.minimum(n, n_words), counts) - 1
    s, e = starts[first_w], ends[last_w]
    fwd, inv = _POWERS.get(len(data) + 1)
    prefix = np.empty(len(data) + 1, U64)
    prefix[0] = 0
    np.add(data, 1, out=prefix[1:], dtype=U64)
    prefix[1:] *= fwd[: len(data)]
    np.cumsum(prefix, out=prefix)
    h = (prefix[e] - prefix[s]) * inv[s]
    h += (e - s).astype(U64) * U64(_LEN_MIX)
    return _fmix64(h), counts


def _chunks(offsets: np.ndarray, chunk_bytes: int) -> list[tuple[int, int]]:
    """Document ranges [i, j) whose text fits in `chunk_bytes` (at least one doc each)."""
    out, i, n_docs = [], 0, len(offsets) - 1
    while i < n_docs:
        j = int(np.searchsorted(offsets, offsets[i] + chunk_bytes, side="right")) - 1
        j = min(max(j, i + 1), n_docs)
        out.append((i, j))
        i = j
    return out


def shingle_hashes(texts: pa.Array, n: int = 5,
                   chunk_bytes: int = CHUNK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every document's word n-grams: (uint64 hashes, int64 offsets of len+1).

    Document i owns hashes[offsets[i]:offsets[i+1]], one per n-gram position (a repeated
    n-gram repeats its hash; as a set they equal `word_shingles(text, n)` hashed by
    `shingle_hash`).
    """
    data, offsets = lower_utf8(texts)
    hashes, counts = [], []
    for i, j in _chunks(offsets, chunk_bytes):
        local = offsets[i : j + 1] - offsets[i]
        h, c = _chunk_shingles(data[offsets[i] : offsets[j]], local, n)
        hashes.append(h)
        counts.append(c)
    if not hashes:
        return np.zeros(0, U64), np.zeros(1, np.int64)
    all_counts = np.concatenate(counts)
    return np.concatenate(hashes), np.concatenate([[0], np.cumsum(all_counts)])


def perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a_i, b_i) of the num_perm universal hash functions, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE_61, size=num_perm, dtype=U64)
    b = rng.integers(0, MERSENNE_61, size=num_perm, dtype=U64)
    return a, b


def minhash_from_hashes(hashes: np.ndarray, offsets: np.ndarray, a: np.ndarray,
                        b: np.ndarray, chunk_shingles: int = 1 << 15) -> np.ndarray:
    """MinHash signatures (n_docs, num_perm) uint64 of segmented shingle hashes.

    Rows of documents without shingles are EMPTY_SLOT. Shingles are processed in
    document-aligned chunks of about `chunk_shingles` (three 8-byte buffers: 768 KiB, about
    cache-sized), and each permutation is reduced per document by `np.minimum.reduceat`.
    """
    n_docs = len(offsets) - 1
    sig_t = np.full((len(a), n_docs), EMPTY_SLOT, U64)  # row writes; transposed at the end
    keys = hashes >> U64(32)
    a_lo, a_hi = a & U64((1 << 31) - 1), a >> U64(31)
    counts = np.diff(offsets)
    for i, j in _chunks(offsets, chunk_shingles):
        docs = np.flatnonzero(counts[i:j] > 0) + i
        if len(docs) == 0:
            continue
        x = keys[offsets[i] : offsets[j]]
        seg = offsets[docs] - offsets[i]
        buf, hi, tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        for p in range(len(a)):
            np.multiply(x, a_lo[p], out=buf)  # < 2^63
            np.multiply(x, a_hi[p], out=hi)  # < 2^62, to be scaled by 2^31
            np.right_shift(hi, U64(30), out=tmp)
            buf += tmp  # the bits above 2^61 of hi * 2^31 wrap to the bottom (2^61 = 1)
            hi &= U64((1 << 30) - 1)
            hi <<= U64(31)
            buf += hi
            buf += b[p]  # the sum stays < 2^64: 2^63 + 2^32 + 2 * 2^61
            np.right_shift(buf, U64(61), out=tmp)
            buf &= U64(MERSENNE_61)
            buf += tmp
            sig_t[p, docs] = np.minimum.reduceat(buf, seg)
    return np.ascontiguousarray(sig_t.T)


@dataclass(frozen=True)
class MinHasher:
    """Shingling plus MinHash with fixed parameters (picklable: ships to executors)."""

    num_perm: int = 128
    shingle_n: int = 5
    seed: int = 1

    @classmethod
    def from_config(cls, cfg: DedupConfig) -> MinHasher:
        return cls(num_perm=cfg.num_perm, shingle_n=cfg.shingle_n, seed=cfg.seed)

    def signatures(self, texts: pa.Array) -> np.ndarray:
        """(len(texts), num_perm) uint64 MinHash signatures of a string array."""
        hashes, offsets = shingle_hashes(texts, self.shingle_n)
        a, b = perm_params(self.num_perm, self.seed)
        return minhash_from_hashes(hashes, offsets, a, b)


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n_docs, bands) int64: band k hashes signature columns [k*rows, (k+1)*rows)."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"{bands} bands x {rows} rows exceed {sig.shape[1]} permutations")
    out = np.empty((sig.shape[0], bands), U64)
    for k in range(bands):
        h = np.full(sig.shape[0], (k + 1) * _LEN_MIX & _MASK64, U64)
        for c in range(k * rows, (k + 1) * rows):
            h ^= sig[:, c]
            h *= U64(0x100000001B3)
            h ^= h >> U64(29)
        out[:, k] = _fmix64(h)
    return out.view(np.int64)


def signature_agreement(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise fraction of equal MinHash slots: the estimated Jaccard of each pair."""
    return np.asarray((sig_a == sig_b).mean(axis=1), dtype=np.float64)


def _set_keys(hashes: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (segment, hash) members as one mixed uint64 key each, and their segment."""
    seg = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    # Folding the segment into the hash lets one 1-D unique/intersect do all pairs; two
    # different (segment, hash) members share a key with probability ~2^-64.
    keys = _fmix64(hashes ^ (seg.astype(U64) * U64(_LEN_MIX)))
    uniq, first = np.unique(keys, return_index=True)
    return uniq, seg[first]


def set_jaccard(ha: np.ndarray, oa: np.ndarray, hb: np.ndarray, ob: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the hash sets of pairs i: A_i = ha[oa[i]:oa[i+1]], B_i likewise.

    Two empty sets give 1.0, as `pipeline.textnorm.jaccard`.
    """
    n = len(oa) - 1
    ka, sa = _set_keys(ha, oa)
    kb, sb = _set_keys(hb, ob)
    size_a = np.bincount(sa, minlength=n)
    size_b = np.bincount(sb, minlength=n)
    _, ia, _ = np.intersect1d(ka, kb, assume_unique=True, return_indices=True)
    inter = np.bincount(sa[ia], minlength=n)
    union = size_a + size_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def pair_similarity(texts_a: pa.Array, texts_b: pa.Array, hasher: MinHasher,
                    exact: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Estimated (signature agreement) and, when `exact`, exact shingle-set Jaccard of
    the pairs (texts_a[i], texts_b[i])."""
    ha, oa = shingle_hashes(texts_a, hasher.shingle_n)
    hb, ob = shingle_hashes(texts_b, hasher.shingle_n)
    a, b = perm_params(hasher.num_perm, hasher.seed)
    est = signature_agreement(minhash_from_hashes(ha, oa, a, b),
                              minhash_from_hashes(hb, ob, a, b))
    return est, (set_jaccard(ha, oa, hb, ob) if exact else None)


def s_curve(j: float | np.ndarray, b: int, r: int) -> float | np.ndarray:
    """Probability that a pair of Jaccard `j` shares at least one of b bands of r rows."""
    return 1.0 - (1.0 - np.power(j, r)) ** b


def choose_bands(threshold: float, num_perm: int, fp_weight: float = 0.5,
                 fn_weight: float = 0.5, grid: int = 2001) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimizing the weighted sum of the
    false-positive area (S-curve below the threshold) and the false-negative area (1 - S
    above it), integrated by the trapezoid rule."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    below = np.linspace(0.0, threshold, grid)
    above = np.linspace(threshold, 1.0, grid)
    best: tuple[float, int, int] | None = None
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(s_curve(below, b, r), below)
            fn = np.trapezoid(1.0 - s_curve(above, b, r), above)
            err = fp_weight * float(fp) + fn_weight * float(fn)
            if best is None or err < best[0] - 1e-15:
                best = (err, b, r)
    assert best is not None
    return best[1], best[2]
