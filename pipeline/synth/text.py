"""Synthetic text corpus: JSONL shards plus loose .txt files, with planted duplicates.

Prose comes from the stdlib's `pydoc_data.topics` (real English, no download). Documents are
random draws of whole sentences from across that corpus, so two distinct documents share few
5-word shingles; planted near-duplicates are then edited copies whose Jaccard is measured
exactly with `pipeline.textnorm`, the same definition dedup uses.

The prose ships with CPython, so byte-identical output for a seed holds for one Python
version; another version's docs change the sentence pool and hence the documents.
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
import pydoc_data.topics
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.synth.common import (
    BadRecord,
    GroundTruth,
    ModalityResult,
    PlantedDuplicate,
    modality_rng,
    rel,
    scaled,
)
from pipeline.textnorm import jaccard, normalize_text, word_shingles

GT = GroundTruth
NEAR_BINS: tuple[float, ...] = (0.95, 0.9, 0.85, 0.8, 0.7, 0.5)
TOO_LONG_CHARS = 150_000
TXT_FRACTION = 0.1
# NFC spellings; NFD splits each accent into a combining mark, so the bytes really differ.
ACCENTED = tuple(
    unicodedata.normalize("NFC", w)
    for w in ("café", "naïve", "résumé", "façade", "Zürich", "piñata", "jalapeño",
              "crème brûlée", "déjà vu", "São Paulo", "Ångström", "coöperate")
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
_INVALID_UTF8 = (b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc")
_PLACEHOLDER = "\ue000"  # private-use char, swapped for raw invalid bytes after encoding


@functools.lru_cache(maxsize=1)
def sentence_pool() -> tuple[tuple[str, str], ...]:
    """(topic, sentence) pairs of prose from pydoc's topics, deduplicated, in stable order."""
    seen: set[str] = set()
    pool: list[tuple[str, str]] = []
    for topic in sorted(pydoc_data.topics.topics):
        for para in re.split(r"\n\s*\n", pydoc_data.topics.topics[topic]):
            # Code samples and grammar productions are not prose and repeat across topics.
            if ">>>" in para or "::=" in para or "|" in para:
                continue
            flat = " ".join(line.strip() for line in para.split("\n"))
            for sent in _SENTENCE_END.split(re.sub(r"^[*\-] ", "", flat)):
                sent = sent.strip()
                n_words = len(sent.split())
                if not (6 <= n_words <= 60 and sent[-1] in ".!?" and sent[0].isupper()):
                    continue
                if sum(c.isalpha() or c == " " for c in sent) < 0.85 * len(sent):
                    continue
                if sent not in seen:
                    seen.add(sent)
                    pool.append((topic, sent))
    return tuple(pool)


@functools.lru_cache(maxsize=1)
def _vocabulary() -> tuple[str, ...]:
    words = {w.strip('.,;:()"*').lower() for _, s in sentence_pool() for w in s.split()}
    return tuple(sorted(w for w in words if w.isalpha() and len(w) > 2))


@dataclass
class _Rec:
    """One raw record before placement.

    `raw` is written as-is instead of the encoded text, except for an invalid-UTF-8 JSON
    line, where it holds the bytes spliced into the otherwise valid line.
    """

    where: str  # "jsonl" or "txt"
    text: str | None = None
    label: str | None = None
    raw: bytes | None = None
    variant: str = ""  # which flavour of a bad record this is
    reason: str = ""  # quarantine reason, for bad records only
    detail: str = ""
    idx: int = -1  # position in the id permutation, set at placement
    file: str = ""
    line: int | None = None

    def doc_id(self, seed: int) -> str:
        return f"doc-{seed}-{self.idx:07d}"


def _draw_sentences(rng: np.random.Generator, lo: int, hi: int) -> list[int]:
    pool = sentence_pool()
    k = int(rng.integers(lo, hi + 1))
    picks = [int(i) for i in rng.choice(len(pool), size=k, replace=False)]
    while sum(len(pool[i][1]) + 1 for i in picks) < 300:
        picks.append(int(rng.integers(len(pool))))
    return picks


def _shingles(text: str) -> set[str]:
    return word_shingles(normalize_text(text), 5)


def _edit_substitute(rng: np.random.Generator, sents: list[str]) -> Callable[[int], str]:
    words = " ".join(sents).split(" ")
    order = rng.permutation(len(words))
    vocab = _vocabulary()
    repl = [vocab[int(i)] for i in rng.integers(len(vocab), size=len(words))]

    def apply(k: int) -> str:
        out = list(words)
        for pos, new in zip(order[:k], repl[:k], strict=True):
            out[pos] = new if new != out[pos].lower() else new + "s"
        return " ".join(out)

    return apply


def _edit_insert(rng: np.random.Generator, sents: list[str]) -> Callable[[int], str]:
    words = " ".join(sents).split(" ")
    vocab = _vocabulary()
    n = 2 * len(words)
    spots = rng.random(n)
    news = [vocab[int(i)] for i in rng.integers(len(vocab), size=n)]

    def apply(k: int) -> str:
        out = list(words)
        for u, new in zip(spots[:k], news[:k], strict=True):
            out.insert(int(u * (len(out) + 1)), new)
        return " ".join(out)

    return apply


def _edit_reorder(rng: np.random.Generator, sents: list[str]) -> Callable[[int], str]:
    order = [int(i) for i in rng.permutation(len(sents))]

    def apply(k: int) -> str:
        # Rotating the first k chosen sentences among their own slots breaks about k
        # sentence boundaries, so similarity falls roughly monotonically with k.
        chosen = sorted(order[:k])
        out = list(sents)
        for src, dst in zip(chosen, chosen[1:] + chosen[:1], strict=True):
            out[dst] = sents[src]
        return " ".join(out)

    return apply


_EDITS = {
    GT.NEAR_SUBSTITUTION: (_edit_substitute, "words substituted"),
    GT.NEAR_INSERTION: (_edit_insert, "words inserted"),
    GT.NEAR_REORDER: (_edit_reorder, "sentences rotated"),
}


def near_duplicate(
    rng: np.random.Generator, sents: list[str], kind: str, target: float
) -> tuple[str, float, str]:
    """An edited copy of the sentences whose exact Jaccard is as close to `target` as the
    edit kind allows; returns (text, jaccard, what was edited)."""
    make, unit = _EDITS[kind]
    apply = make(rng, sents)
    base = _shingles(" ".join(sents))
    n_words = len(" ".join(sents).split(" "))
    k_max = {GT.NEAR_SUBSTITUTION: n_words, GT.NEAR_INSERTION: 2 * n_words}.get(kind, len(sents))

    seen: dict[int, float] = {}

    def score(k: int) -> float:
        if k not in seen:
            seen[k] = jaccard(base, _shingles(apply(k)))
        return seen[k]

    lo, hi = 1, k_max
    while lo < hi:  # smallest k with jaccard <= target
        mid = (lo + hi) // 2
        if score(mid) <= target:
            hi = mid
        else:
            lo = mid + 1
    best = min({max(1, lo - 1), lo}, key=lambda k: (abs(score(k) - target), k))
    return apply(best), score(best), f"{best} {unit}"


def _ws_unicode_variant(rng: np.random.Generator, text: str) -> str:
    """Same content after `normalize_text`, different bytes: NFD plus whitespace noise."""
    parts = unicodedata.normalize("NFD", text).split(" ")
    seps = ("  ", "\t", "\n", "\r\n", " \t ", "\u00a0", "\u2003", " \u200b")
    out = [parts[0]]
    for p in parts[1:]:
        out.append(seps[int(rng.integers(len(seps)))] if rng.random() < 0.15 else " ")
        out.append(p)
    return "\n  " + "".join(out) + " \n\n"


def _with_accents(rng: np.random.Generator, sents: list[str]) -> list[str]:
    out = list(sents)
    for _ in range(int(rng.integers(2, 5))):
        i = int(rng.integers(len(out)))
        words = out[i].split(" ")
        word = ACCENTED[int(rng.integers(len(ACCENTED)))]
        words.insert(int(rng.integers(1, len(words) + 1)), word)
        out[i] = " ".join(words)
    return out


def _json_line(rec: _Rec, doc_id: str) -> bytes:
    obj: dict[str, str] = {"id": doc_id, "text": rec.text or ""}
    obj["url"] = f"https://docs.example.org/{rec.label or 'misc'}/{doc_id}"
    if rec.label is not None:
        obj["label"] = rec.label
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def _long_text(rng: np.random.Generator) -> str:
    pool = sentence_pool()
    n = TOO_LONG_CHARS // 110 + 50
    text = " ".join(pool[int(i)][1] for i in rng.integers(len(pool), size=n))
    return text[:TOO_LONG_CHARS].rsplit(" ", 1)[0] + "."


def _plant_bad(rng: np.random.Generator, scale: float) -> list[_Rec]:
    """Bad records with reason and detail set; their bytes are finished at placement."""
    pool = sentence_pool()
    out: list[_Rec] = []

    def add(rec: _Rec, reason: str, detail: str) -> None:
        rec.reason, rec.detail = reason, detail
        out.append(rec)

    def text() -> str:
        return " ".join(pool[i][1] for i in _draw_sentences(rng, 4, 10))

    for j in range(scaled(2, scale, 1)):
        marked = text().replace(" ", " " + _PLACEHOLDER, 1)
        rec = _Rec("jsonl", text=marked, label="misc", raw=_INVALID_UTF8[j % 4])
        add(rec, GT.INVALID_UTF8, "invalid UTF-8 bytes inside the JSON string")
    for _ in range(scaled(1, scale, 1)):
        raw = (text() + " Le café était fermé.").encode("cp1252", errors="replace")
        add(_Rec("txt", raw=raw), GT.INVALID_UTF8, "cp1252-encoded .txt file")
    for j in range(scaled(2, scale, 2)):
        blank = "" if j % 2 == 0 else " \n\t  "
        add(_Rec("jsonl", text=blank, label="misc"), GT.EMPTY_TEXT, f"text field {blank!r}")
    for _ in range(scaled(1, scale, 1)):
        add(_Rec("txt", raw=b""), GT.EMPTY_TEXT, "empty .txt file")
    for j in range(scaled(3, scale, 2)):
        full = json.dumps({"id": "?", "text": text(), "url": "https://docs.example.org/x"})
        if j % 2 == 0:
            cut = full[: int(len(full) * float(rng.uniform(0.3, 0.8)))]
            add(_Rec("jsonl", raw=cut.encode()), GT.MALFORMED_JSON, "truncated object")
        else:
            garbage = (" xyz", "}", ' {"id": 1}')[j % 3]
            add(_Rec("jsonl", raw=(full + garbage).encode()), GT.MALFORMED_JSON,
                "trailing garbage")
    for j in range(scaled(3, scale, 2)):
        # Schema drift ("body" instead of "text") is the usual way the field goes missing.
        key = "body" if j % 2 else ""
        rec = _Rec("jsonl", text=text(), label="misc", variant=key)
        add(rec, GT.MISSING_FIELD, f"no 'text' key{' (has body)' if key else ''}")
    for where in ("jsonl", "txt"):
        for _ in range(scaled(1, scale, 1)):
            add(_Rec(where, text=_long_text(rng), label="misc"), GT.TOO_LONG,
                f"about {TOO_LONG_CHARS} chars")
    return out


def _record_bytes(rec: _Rec, doc_id: str) -> bytes:
    """The bytes written for `rec`: a JSONL line (without newline) or a whole .txt file."""
    reason = rec.reason
    if rec.where == "txt":
        return rec.raw if rec.raw is not None else (rec.text or "").encode("utf-8")
    if reason == GT.INVALID_UTF8:
        return _json_line(rec, doc_id).replace(_PLACEHOLDER.encode(), rec.raw or b"\xff")
    if reason == GT.MALFORMED_JSON:
        return (rec.raw or b"").replace(b'"id": "?"', f'"id": "{doc_id}"'.encode())
    if reason == GT.MISSING_FIELD:
        obj = {"id": doc_id, "url": f"https://docs.example.org/misc/{doc_id}", "label": "misc"}
        if rec.variant:
            obj[rec.variant] = rec.text or ""
        return json.dumps(obj, ensure_ascii=False).encode("utf-8")
    return _json_line(rec, doc_id)


def generate_text(out_dir: pathlib.Path, scale: float, seed: int) -> ModalityResult:
    """Write `out_dir/text/` and return what was planted there."""
    rng = modality_rng(seed, "text")
    pool = sentence_pool()
    root = out_dir / "text"
    (root / "txt").mkdir(parents=True, exist_ok=True)
    n_total = scaled(1000, scale, 100)

    bad = _plant_bad(rng, scale)
    n_exact, n_ws = scaled(15, scale, 2), scaled(10, scale, 2)
    n_per_bin = scaled(4, scale, 2)
    n_base = n_total - len(bad) - n_exact - n_ws - n_per_bin * len(NEAR_BINS)

    def where() -> str:
        return "txt" if rng.random() < TXT_FRACTION else "jsonl"

    base_sents: list[list[str]] = []
    recs: list[_Rec] = []
    for _ in range(n_base):
        picks = _draw_sentences(rng, 5, 20)
        base_sents.append([pool[i][1] for i in picks])
        recs.append(_Rec(where(), text=" ".join(base_sents[-1]), label=pool[picks[0]][0]))

    # Originals are drawn without replacement, so no document is the source of two plants.
    # Long originals let single edits move Jaccard in small steps, so high bins are hit.
    n_near = n_per_bin * len(NEAR_BINS)
    by_len = sorted(range(n_base), key=lambda i: (-len(recs[i].text or ""), i))
    long_enough = sorted(by_len[: max(2 * n_near, sum(len(r.text or "") >= 1500 for r in recs))])
    near_src = [int(i) for i in rng.choice(long_enough, size=n_near, replace=False)]
    rest = sorted(set(range(n_base)) - set(near_src))
    other_src = [int(i) for i in rng.choice(rest, size=n_exact + n_ws, replace=False)]

    plans: list[tuple[int, _Rec, str, float | None, str]] = []
    for j, src in enumerate(other_src):
        orig = recs[src]
        if j < n_exact:
            plans.append((src, _Rec(where(), text=orig.text, label=orig.label), GT.EXACT, None,
                          "same text"))
        else:
            base_sents[src] = _with_accents(rng, base_sents[src])
            orig.text = " ".join(base_sents[src])
            variant = _ws_unicode_variant(rng, orig.text)
            assert normalize_text(variant) == normalize_text(orig.text) != variant
            plans.append((src, _Rec(where(), text=variant, label=orig.label),
                          GT.WHITESPACE_UNICODE, None, "NFD, whitespace and zero-width noise"))
    for j, src in enumerate(near_src):
        target = NEAR_BINS[j // n_per_bin]
        kinds = [GT.NEAR_SUBSTITUTION, GT.NEAR_INSERTION]
        if target >= 0.85:
            kinds.append(GT.NEAR_REORDER)
        kind = kinds[j % len(kinds)]
        copy, jac, what = near_duplicate(rng, base_sents[src], kind, target)
        if abs(jac - target) > 0.03 and kind != GT.NEAR_SUBSTITUTION:
            kind = GT.NEAR_SUBSTITUTION
            copy, jac, what = near_duplicate(rng, base_sents[src], kind, target)
        plans.append((src, _Rec(where(), text=copy, label=recs[src].label), kind, target, what))

    all_recs = recs + [p[1] for p in plans] + bad
    for idx, k in enumerate(rng.permutation(len(all_recs))):
        all_recs[int(k)].idx = idx

    jsonl = sorted((r for r in all_recs if r.where == "jsonl"), key=lambda r: r.idx)
    n_shards = max(3, math.ceil(len(jsonl) / 25_000))
    for s in range(n_shards):
        path = root / f"part-{s:03d}.jsonl"
        lines: list[bytes] = []
        for rec in jsonl[s::n_shards]:
            lines.append(_record_bytes(rec, rec.doc_id(seed)))
            rec.file, rec.line = rel(path, out_dir), len(lines)
        path.write_bytes(b"".join(line + b"\n" for line in lines))
    for rec in all_recs:
        if rec.where == "txt":
            path = root / "txt" / f"{rec.doc_id(seed)}.txt"
            path.write_bytes(_record_bytes(rec, rec.doc_id(seed)))
            rec.file, rec.line = rel(path, out_dir), None

    result = ModalityResult(n_records=len(all_recs))
    for rec in bad:
        result.bad.append(BadRecord("text", rec.file, rec.line, rec.reason, rec.detail,
                                    rec.doc_id(seed)))
    result.bad.sort(key=lambda b: (b.file, b.line or 0))
    for src, copy_rec, kind, aim, what in plans:
        orig = recs[src]
        exact = jaccard(_shingles(orig.text or ""), _shingles(copy_rec.text or ""))
        result.duplicates.append(PlantedDuplicate(
            "text", kind, orig.file, orig.line, orig.doc_id(seed),
            copy_rec.file, copy_rec.line, copy_rec.doc_id(seed), exact, aim, what))
    return result
