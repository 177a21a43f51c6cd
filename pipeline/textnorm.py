"""Text normalization and shingling shared by synth, ingest and dedup.

One definition lives here so that the Jaccard levels planted by `pipeline synth`, the
`content_hash` computed at ingest and the shingles hashed by dedup all agree.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0/C1 control characters except tab/newline/carriage return, which are whitespace and
# collapse below. Also the Unicode "format" characters that commonly ride along in scraped
# text (zero-width space/joiners, BOM).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_WHITESPACE_RE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Return `text` in Unicode NFC with control characters removed and whitespace collapsed.

    Runs of any Unicode whitespace become one ASCII space; leading and trailing space is
    stripped. Case is preserved: the curated text is what a model trains on.
    """
    # Controls go first: removing one between a letter and a combining mark after NFC
    # would leave a decomposed pair, and normalizing twice would then change the text.
    text = _CONTROL_RE.sub("", text)
    text = unicodedata.normalize("NFC", text)
    return _WHITESPACE_RE.sub(" ", text).strip()


def content_hash(normalized: str) -> str:
    """Hex SHA-256 of the UTF-8 bytes of already-normalized text."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def shingle_words(normalized: str) -> list[str]:
    """Words used for shingling: the normalized text lower-cased, split on spaces."""
    return normalized.lower().split(" ") if normalized else []


def word_shingles(normalized: str, n: int = 5) -> set[str]:
    """The set of word n-grams of `normalized` text (lower-cased), joined by single spaces.

    A document shorter than `n` words yields one shingle holding all its words, so that
    short documents still compare equal to themselves.
    """
    words = shingle_words(normalized)
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    """Jaccard similarity of two shingle sets (1.0 for two empty sets)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)
