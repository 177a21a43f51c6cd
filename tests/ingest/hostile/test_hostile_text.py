"""Hostile text inputs through ingest and dedup: every record gets its expected fate.

The corpus is built here, byte by byte, in a temporary folder (a few KB): broken,
truncated, oversized, lying about its type, mis-encoded, adversarial for the JSON parser
and named to break paths. `EXPECTED` maps `<file>` or `<file>:<line>` to the reason the
record must be quarantined with, or None when it must be curated. The one test runs
`ingest/text` and `dedup/text` through the runner: no stage fails, every record comes out
with its expected reason, nothing else is curated, and dedup accounts for every curated
record (kept or duplicate).
"""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.dedup.stage import dedup_stage
from pipeline.ingest.stage import ingest_stage
from pipeline.orchestrator import run_pipeline
from pipeline.orchestrator.stages import synth_stage
from pipeline.storage import Location, RunPaths, published_files, verify_stage
from pipeline.textnorm import normalize_text

pytestmark = pytest.mark.integration

MAX_CHARS = 300
MALFORMED, UTF8, MISSING, EMPTY, LONG = ("MALFORMED_JSON", "INVALID_UTF8", "MISSING_FIELD",
                                         "EMPTY_TEXT", "TOO_LONG")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _oracle(raw: bytes) -> str | None:
    """What a strict reading of one line says (for files of arbitrary bytes)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return UTF8

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    def reject(constant: str) -> Any:
        raise ValueError(constant)

    try:
        obj = json.loads(line.lstrip("\ufeff"), parse_constant=reject, object_pairs_hook=unique)
    except (ValueError, RecursionError):
        return MALFORMED
    if not isinstance(obj, dict):
        return MALFORMED
    if not isinstance(obj.get("text"), str):
        return MISSING
    n = len(normalize_text(obj["text"]))
    return EMPTY if n < 1 else LONG if n > MAX_CHARS else None


def _lines_of(data: bytes) -> dict[int, bytes]:
    """Non-blank lines by 1-based number, as ingest splits them ('\\n', a trailing '\\r'
    stripped; blank = ASCII whitespace only)."""
    out = {}
    for no, line in enumerate(data.split(b"\n"), start=1):
        line = line[:-1] if line.endswith(b"\r") else line
        if line.strip(b" \t\n\r\x0b\x0c"):
            out[no] = line
    return out


def _jsonl(*lines: tuple[bytes, str | None], sep: bytes = b"\n", end: bytes = b"\n"
           ) -> tuple[bytes, dict[int, str | None]]:
    data = sep.join(line for line, _ in lines) + end
    numbered = _lines_of(data)
    reasons = [r for line, r in lines if line.strip(b" \t\n\r\x0b\x0c")]
    assert len(numbered) == len(reasons), "a case line holds a newline"
    return data, dict(zip(numbered, reasons, strict=True))


def _corpus() -> dict[str, tuple[bytes, dict[int, str | None] | str | None]]:
    """file name -> (bytes, {line: reason} for JSON Lines, or the reason of a .txt file)."""
    deep = b"[" * 1500 + b"]" * 1500
    files: dict[str, tuple[bytes, dict[int, str | None] | str | None]] = {
        # Broken and truncated: a cut object, a cut file (no final newline), a cut escape.
        "broken.jsonl": _jsonl((b'{"text": "abc', MALFORMED), (b'{"text": "ok"', MALFORMED),
                               (b'{"text": "\\u00', MALFORMED), (b'{"text": "fine"}', None)),
        "truncated.jsonl": _jsonl((b'{"text": "first"}', None), (b'{"text": "sec', MALFORMED),
                                  end=b""),
        # Oversized: one long text, one long line whose text is short.
        "oversized.jsonl": _jsonl(
            (json.dumps({"text": "w " * 400}).encode(), LONG),
            (json.dumps({"text": "short", "pad": "x" * 20000}).encode(), None)),
        # Parser adversarial: nesting, numbers, non-numbers, duplicate keys, smuggling.
        "parser.jsonl": _jsonl(
            (b'{"text": "deep", "n": ' + deep + b"}", MALFORMED),  # over 1000 levels
            (b'{"text": "nested ok", "n": ' + b"[" * 50 + b"]" * 50 + b"}", None),
            (b'{"text": "huge", "n": ' + b"9" * 1500 + b"}", MALFORMED),  # over 1000 digits
            (b'{"text": "big exponent", "n": 1e999999}', None),
            (b'{"text": "nan", "n": NaN}', MALFORMED),
            (b'{"text": "inf", "n": -Infinity}', MALFORMED),
            (b'{"text": "a", "text": "b"}', MALFORMED),  # duplicate keys
            (b'{"text": "benign"}, "v": {"text": "smuggled"}', MALFORMED),
            (b'{"text": "x1"}, "z": 1', MALFORMED),
            (b'{"text": "x2"}] {"text": "smuggled"}', MALFORMED),
            (b'{"text": "x3"} // comment', MALFORMED),
            (b"{'text': 'single quotes'}", MALFORMED),
            (b'{"__proto__": {"text": "p"}, "text": "proto ok"}', None),
            (b'{"text": {"$ne": ""}}', MISSING),
            (b'["text", "array"]', MALFORMED),
            (b"null", MALFORMED),
        ),
        # BOMs, NUL bytes and surrogates.
        "bytes.jsonl": _jsonl(
            (b'\xef\xbb\xbf{"text": "bom dup"}', None),
            (b'\xef\xbb\xbf\xef\xbb\xbf{"text": "two boms"}', None),
            (b'{"text": "bom after"}\xef\xbb\xbf', MALFORMED),
            (b'{"text": "nul after"}\x00', MALFORMED),
            (b'{"text": "raw\x00nul"}', MALFORMED),  # unescaped control character
            (b'{"text": "esc\\u0000nul"}', None),  # escaped: removed by normalization
            (b'{"text": "lone \\ud800 surrogate"}', MALFORMED),
            (b'{"text": "pair \\ud83d\\ude00 ok"}', None),
            (b'{"text": "cesu \xed\xa0\x80"}', UTF8),  # an encoded surrogate is not UTF-8
            (b'{"text": "overlong \xc0\xaf"}', UTF8),
            (b'{"text": "\\u200b\\u200d\\ufeff "}', EMPTY),  # only invisible characters
            (b'{"text": "line\xe2\x80\xa8sep ok"}', None),  # raw U+2028 is valid JSON
            (b'{"text": "bom dup"}', None),  # the same text as line 1: an exact duplicate
        ),
        # Line endings: CRLF, and CR alone (one line, so one malformed record).
        "crlf.jsonl": _jsonl((b'{"text": "crlf one"}', None), (b'{"text": "crlf two"}', None),
                             sep=b"\r\n", end=b"\r\n"),
        "cr_only.jsonl": _jsonl((b'{"text": "cr a"}\r{"text": "cr b"}', MALFORMED)),
        # Mis-encoded: Latin-1 and UTF-16 (with BOM) JSON Lines.
        "latin1.jsonl": _jsonl(('{"text": "café"}'.encode("latin-1"), UTF8),
                               (b'{"text": "ascii is fine"}', None)),
        # A JSON document (pretty-printed array), not JSON Lines.
        "array.json": _jsonl((b"[", MALFORMED), (b'  {"text": "in an array"},', MALFORMED),
                             (b'  {"text": "last"}', None), (b"]", MALFORMED)),
        # Names that break paths (spaces, unicode, %, #); glob characters: GLOB_NAMES.
        "a b.jsonl": _jsonl((b'{"text": "space in name"}', None)),
        "ünï©ødé.jsonl": _jsonl((b'{"text": "unicode name"}', None)),
        "100%.jsonl": _jsonl((b'{"text": "percent name"}', None)),
        "e#frag.jsonl": _jsonl((b'{"text": "hash name"}', None)),
        # Empty and blank-only files hold no record; an empty .txt is one empty record.
        "empty.jsonl": (b"", {}),
        "blank.jsonl": (b"\n\n  \r\n\t\n", {}),
        "empty.txt": (b"", EMPTY),
        "control.txt": (b"\x00\x01\x1b\x7f", EMPTY),
        "latin1.txt": ("naïve".encode("latin-1"), UTF8),
        "long.txt": (b"word " * 100, LONG),
        "good.txt": ("a plain document in a \u00fcnicode file".encode(), None),
    }
    # Lying about their type: a PNG and gzip bytes named as JSON Lines, a PNG named .txt;
    # UTF-16 named .jsonl. Each line of these is judged by the strict oracle.
    lying = {"image.jsonl": _png(), "packed.jsonl": gzip.compress(b'{"text": "zip"}\n' * 20,
                                                                  mtime=0),
             "utf16.jsonl": '{"text": "wide"}\n{"text": "two"}\n'.encode("utf-16")}
    for name, data in lying.items():
        files[name] = (data, {no: _oracle(line) for no, line in _lines_of(data).items()})
    files["image.txt"] = (_png(), UTF8)
    return files


#: glob characters in names: read as the literal names they are (Spark's reader would
#: expand them: `a1.jsonl` read twice, `a[1].jsonl` lost)
GLOB_NAMES = {"a[1].jsonl": b'{"text": "bracket name"}\n',
              "a1.jsonl": b'{"text": "plain twin of the bracket name"}\n',
              "b{x,y}.jsonl": b'{"text": "brace name"}\n', "c?.jsonl": b'{"text": "q name"}\n',
              "d*.jsonl": b'{"text": "star name"}\n'}


def _write(root: Path) -> dict[str, str | None]:
    expected: dict[str, str | None] = {}
    corpus = {**_corpus(), **{n: (d, {1: None}) for n, d in GLOB_NAMES.items()}}
    for name, (data, fate) in corpus.items():
        (root / name).write_bytes(data)
        if isinstance(fate, dict):
            expected.update({f"{name}:{no}": r for no, r in fate.items()})
        else:
            expected[name] = fate
    return expected


def _mismatches(got: dict[str, str | None], expected: dict[str, str | None]
                ) -> dict[str, tuple[str | None, str | None]]:
    """{record: (its fate, the expected fate)} where they differ ("absent": no fate)."""
    return {k: (got.get(k, "absent"), expected.get(k, "absent"))
            for k in sorted(set(got) | set(expected))
            if got.get(k, "absent") != expected.get(k, "absent")}


def _rows(stage: Location, prefix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for loc in published_files(stage, prefix=prefix, suffix=".parquet"):
        with loc.open() as fh:
            rows += pq.read_table(fh).to_pylist()
    return rows


def _run(tmp: Path) -> tuple[dict[str, str | None], dict[str, Any]]:
    raw = tmp / "raw"
    raw.mkdir()
    expected = _write(raw)
    cfg = config_from_dict({
        "run_id": "hostile", "storage": {"root": f"file://{tmp / 'out'}"},
        "modalities": ["text"], "spark": {"shuffle_partitions": 2},
        "inputs": {"text": {"paths": [str(raw)], "max_chars": MAX_CHARS}},
        "gates": {"max_quarantine_rate": 1.0, "max_duplicate_rate": 1.0}})
    outcomes = run_pipeline(cfg, [synth_stage(), ingest_stage("text"), dedup_stage("text")])
    states = {o.name: o.state for o in outcomes if o.name != "synth"}
    assert states == {"ingest/text": "ran", "dedup/text": "ran"}
    run = RunPaths(Location(f"file://{tmp / 'out'}"), "hostile")
    prefix = f"file://{raw}/"

    def rel(source: str) -> str:
        assert source.startswith(prefix), source
        return source[len(prefix):]

    ingest, dedup = run.stage("ingest/text"), run.stage("dedup/text")
    curated = _rows(ingest, "curated/")
    got: dict[str, str | None] = {rel(q["source"]): q["reason"]
                                  for q in _rows(ingest, "quarantine/")}
    got.update({rel(c["source"]): None for c in curated})
    return expected, {"got": got, "curated": curated, "ingest": verify_stage(ingest),
                      "dedup": verify_stage(dedup), "kept": _rows(dedup, "data/"),
                      "dups": _rows(dedup, "duplicates/"), "rel": rel}


def test_hostile_text_through_ingest_and_dedup(spark: Any, tmp_path: Path) -> None:
    expected, out = _run(tmp_path)
    kinds = {key.split(":")[0] for key in expected}
    assert len(kinds) >= 15
    # Every record once, with its expected reason; nothing else curated.
    assert _mismatches(out["got"], expected) == {}
    counts = out["ingest"].row_counts
    assert counts["input"] == len(expected) == counts["curated"] + counts["quarantined"]
    by_key = {out["rel"](c["source"]): c for c in out["curated"]}
    assert by_key["bytes.jsonl:6"]["text"] == "escnul"
    assert by_key["parser.jsonl:13"]["text"] == "proto ok"
    assert not any("smuggled" in c["text"] for c in out["curated"])
    # Dedup accounts for every curated record: kept, or a duplicate of a kept one.
    kept = {r["doc_id"] for r in out["kept"]}
    dropped = {d["dropped_id"]: d for d in out["dups"]}
    assert kept.isdisjoint(dropped) and kept | set(dropped) == {c["doc_id"]
                                                                for c in out["curated"]}
    assert out["dedup"].row_counts["kept"] + out["dedup"].row_counts["duplicates"] == \
        counts["curated"]
    # The BOM-prefixed and the plain "bom dup" text are one document: one is an exact dup.
    same = [c["doc_id"] for c in out["curated"] if c["text"] == "bom dup"]
    assert len(same) == 2 and sum(d in dropped for d in same) == 1
    assert {dropped[d]["rule"] for d in same if d in dropped} == {"exact"}
