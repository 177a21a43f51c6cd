"""Text ingest: every reason code, strict JSON, normalization and hashing equivalence,
schema, determinism, relocation-proof ids, reconciliation, and the synth ground truth."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.config import TextInputConfig
from pipeline.ingest.common import CARD_MASK
from pipeline.ingest.reasons import TEXT_REASONS
from pipeline.ingest.text import CURATED_COLUMNS, ingest_text, normalize_arrow
from pipeline.spark_io import read_files
from pipeline.storage import Location
from pipeline.textnorm import content_hash, normalize_text

CFG = TextInputConfig(min_chars=1, max_chars=50)

# Strings that exercise every step of normalize_text.
TRICKY = [
    "",
    "plain",
    "Cafe\u0301 na\u0131ve re\u0301sume\u0301",  # NFD accents compose under NFC
    "A\u030a\u0301ngstro\u0308m",  # stacked combining marks
    "\u1100\u1161\u11a8",  # Hangul jamo compose into one syllable
    "tabs\tand\nnew\r\nlines\x0b\x0cff",
    "  lead and trail \t\n",
    "zero\u200bwidth\u200cjoin\u200dword\u2060joiner\ufeffbom",
    "c1\x80\x85\x9fcontrols\x00\x07\x1b\x7f",
    "nbsp\u00a0ideo\u3000em\u2003line\u2028para\u2029narrow\u202f",
    "e\u200b\u0301",  # removing the ZWSP after NFC leaves e + combining acute, as in Python
    "\x1c\x1d\x1e\x1f are controls and whitespace",
    "emoji 👍🏽 and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\u0085\u00a0 \t",
]


def _oracle(line: str, cfg: TextInputConfig = CFG) -> str | None:
    """What a strict Python reading of one JSONL line says about it."""

    def reject(constant: str) -> Any:
        raise ValueError(constant)

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # Duplicate keys are ambiguous (parsers disagree on which one wins): rejected.
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    try:
        obj = json.loads(line.lstrip("\ufeff"), parse_constant=reject,
                         object_pairs_hook=unique)
    except ValueError:
        return "MALFORMED_JSON"
    if not isinstance(obj, dict):
        return "MALFORMED_JSON"
    text = obj.get(cfg.text_field)
    if not isinstance(text, str):
        return "MISSING_FIELD"
    n = len(normalize_text(text))
    if n < cfg.min_chars:
        return "EMPTY_TEXT"
    return "TOO_LONG" if n > cfg.max_chars else None


# JSON edge cases; the expected outcome of each is whatever strict Python JSON says.
STRICT_LINES = [
    '{"text": "ok"}', '  {"text": "padded"}  \t', '{"text": "x"} xyz', '{"text": "x"}}',
    '{"text": "x"}]', '{"text": "x"},', '{"text": "x"}{"text": "y"}', '{"text": "x"} {"a": 1}',
    '{"text": "x"}, "e": 5}', '{"text": "a",}', "{'text': 'single'}", '{text: "unquoted"}',
    '{"text": "x", "n": NaN}', '{"text": "x", "n": Infinity}', '{"text": "x", "n": 01}',
    '{"text": "x"} // comment', '{"text": "tab\tinside"}', '{"text": "\\x41"}',
    '{"text": "caf\\u00e9"}', '[{"text": "in an array"}]', '"a string"', "true", "42", "null",
    '{}', '{"a": {"text": "nested"}}', '{"text": ["a"]}', '{"text": {"a": 1}}', '{"text": false}',
    '{"v": 1, "e": 2, "text": "wrapper keys are fine"}', '{"text": 1, "text": "duplicate key"}',
    '\ufeff{"text": "after a BOM"}', '{"text": "x", "big": 123456789012345678901234567890}',
    # Trailing members after the object: each once smuggled a record past the old wrapper.
    '{"text": "x"}, "z": 1', '{"text": "benign"}, "v": {"text": "smuggled"}',
    '{"text": "benign"}, "e": 0, "v": {"text": "smuggled"}', '{"a": {"text": "x"}}, "text": "y"',
    '{"text": "x"}, {"text": "y"}', '{"text": "x", "a": {"b": 1, "b": 2}}',
    # A `]` closes a wrapping array early, and Spark's parser ignores what follows.
    '{"text": "x"}] {"text": "y"}', '{"text": "x"}], "~~~~"]', '{"text": "x"}, "~~~~"] junk',
    '{"text": "x"}, "~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~"]',
]


def _uri(path: Path) -> str:
    return "file://" + str(path.resolve())


def _write_fixture(root: Path) -> dict[str, str | None]:
    """Raw text inputs with one record per outcome; returns source -> expected reason."""
    (root / "shard" / "deep").mkdir(parents=True)
    (root / "txt").mkdir()
    good_nfd = json.dumps({"text": "Cafe\u0301\tna\u0131ve\u200b\u0085end", "id": "nfd"})
    lines: list[tuple[bytes, str | None]] = [
        (json.dumps({"id": "r1", "text": "Hello   world", "label": "greet"}).encode(), None),
        (b"", None),  # blank: layout, not a record
        (good_nfd.encode(), None),
        (json.dumps({"text": "raw UTF-8 Zürich"}, ensure_ascii=False).encode(), None),
        (b'{"text": "abc', "MALFORMED_JSON"),
        (b'{"text": "abc"} xyz', "MALFORMED_JSON"),
        (b"[1, 2]", "MALFORMED_JSON"),
        (b'{"text": "caf\xe9"}', "INVALID_UTF8"),
        (b'{"body": "schema drift"}', "MISSING_FIELD"),
        (b'{"text": null}', "MISSING_FIELD"),
        (b'{"text": 42}', "MISSING_FIELD"),
        (b'{"text": " \\t\\u200b\\u00a0 "}', "EMPTY_TEXT"),
        (json.dumps({"text": "x" * 51}).encode(), "TOO_LONG"),
        (b"   \t\r", None),  # whitespace only: not a record
        (b'{"id": 7, "text": "numbers as ids", "label": 3}', None),
        (b'{"text": 4111 1111 1111 1111}', "MALFORMED_JSON"),  # raw must come back masked
    ]
    shard = root / "shard" / "a.jsonl"
    shard.write_bytes(b"\r\n".join(line for line, _ in lines) + b"\r\n")  # CRLF file
    expected: dict[str, str | None] = {}
    for no, (line, reason) in enumerate(lines, start=1):
        if line.strip():
            expected[f"{_uri(shard)}:{no}"] = reason
    strict = root / "shard" / "deep" / "edge.json"
    strict.write_text("\n".join(STRICT_LINES) + "\n", encoding="utf-8")
    for no, line in enumerate(STRICT_LINES, start=1):
        expected[f"{_uri(strict)}:{no}"] = _oracle(line)
    tricky = root / "tricky.jsonl"
    tricky.write_text("\n".join(json.dumps({"text": t}) for t in TRICKY) + "\n",
                      encoding="utf-8")
    for no, text in enumerate(TRICKY, start=1):
        expected[f"{_uri(tricky)}:{no}"] = _oracle(json.dumps({"text": text}))
    docs = {"good.txt": (b"A plain\n\ndocument.\n", None), "empty.txt": (b"", "EMPTY_TEXT"),
            "latin1.txt": (b"caf\xe9", "INVALID_UTF8"), "spaces.txt": (b"  \n\t ", "EMPTY_TEXT")}
    for name, (data, reason) in docs.items():
        (root / "txt" / name).write_bytes(data)
        expected[_uri(root / "txt" / name)] = reason
    # Not inputs: other extensions, hidden files, markers.
    (root / "notes.md").write_text("# not text input\n")
    (root / "txt" / ".hidden.txt").write_text("hidden")
    (root / "shard" / "_SUCCESS.jsonl").write_text('{"text": "marker"}\n')
    return expected


@pytest.fixture(scope="module")
def fixture_run(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("text_in")
    expected = _write_fixture(root)
    result = ingest_text(spark, CFG, [Location(str(root))])
    return {"root": root, "expected": expected, "result": result,
            "curated": result.curated.collect(), "quarantine": result.quarantine.collect()}


# --------------------------------------------------------------------------- unit tests


@pytest.mark.unit
@pytest.mark.parametrize("text", TRICKY)
def test_normalize_arrow_equals_normalize_text(text: str) -> None:
    assert normalize_arrow(pa.array([text])).to_pylist() == [normalize_text(text)]


@pytest.mark.unit
def test_normalize_arrow_keeps_nulls() -> None:
    assert normalize_arrow(pa.array([None, " a "], pa.string())).to_pylist() == [None, "a"]


@pytest.mark.unit
def test_normalize_arrow_every_code_point() -> None:
    # Each code point alone, between letters and at the end: covers the control and
    # whitespace classes and NFC composition with a preceding base letter.
    cps = [c for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    strings = [f"a{chr(c)}b {chr(c)}" for c in cps]
    got = normalize_arrow(pa.array(strings)).to_pylist()
    diff = [hex(c) for c, s, g in zip(cps, strings, got, strict=True) if normalize_text(s) != g]
    assert diff == []


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(TRICKY) | st.text(max_size=8), max_size=6).map("".join))
def test_normalize_arrow_property(text: str) -> None:
    assert normalize_arrow(pa.array([text])).to_pylist() == [normalize_text(text)]


@pytest.mark.unit
def test_reason_list_is_the_fixed_one() -> None:
    assert set(TEXT_REASONS) == {"MALFORMED_JSON", "INVALID_UTF8", "MISSING_FIELD",
                                 "EMPTY_TEXT", "TOO_LONG", "INVALID_ENCODING",
                                 "MALFORMED_ROW", "UNREADABLE_FILE", "UNSUPPORTED_FILE"}


# --------------------------------------------------------------------- integration tests


# Encodings, tables, broken files and unsupported files: tests/ingest/test_text_formats.py
# and tests/ingest/test_ingest_stage_inputs.py (the sample data keeps its five codes).
FILE_REASONS = {"INVALID_ENCODING", "MALFORMED_ROW", "UNREADABLE_FILE", "UNSUPPORTED_FILE"}


@pytest.mark.integration
@pytest.mark.parametrize("reason", sorted(set(TEXT_REASONS) - FILE_REASONS))
def test_each_reason_at_its_source(fixture_run: dict[str, Any], reason: str) -> None:
    want = {s for s, r in fixture_run["expected"].items() if r == reason}
    got = {q["source"] for q in fixture_run["quarantine"] if q["reason"] == reason}
    assert want, f"the fixture plants no {reason}"
    assert got == want


@pytest.mark.integration
def test_outcome_of_every_record(fixture_run: dict[str, Any]) -> None:
    got: dict[str, str | None] = {q["source"]: q["reason"] for q in fixture_run["quarantine"]}
    got.update({c["source"]: None for c in fixture_run["curated"]})
    assert got == fixture_run["expected"]
    result = fixture_run["result"]
    assert result.n_input == len(fixture_run["expected"])
    assert result.n_input == len(fixture_run["curated"]) + len(fixture_run["quarantine"])


@pytest.mark.integration
def test_trailing_members_are_malformed_not_smuggled(fixture_run: dict[str, Any]) -> None:
    # Issue 13.1: `{"text": "x"}, "z": 1` was curated as "x" and
    # `{"text": "benign"}, "v": {"text": "smuggled"}` as "smuggled".
    strict = _uri(fixture_run["root"] / "shard" / "deep" / "edge.json")
    by_source = {q["source"]: q for q in fixture_run["quarantine"]}
    for line in ('{"text": "x"}, "z": 1', '{"text": "benign"}, "v": {"text": "smuggled"}'):
        q = by_source[f"{strict}:{STRICT_LINES.index(line) + 1}"]
        assert q["reason"] == "MALFORMED_JSON" and q["raw"] == line
        assert "exactly one strict JSON object" in q["detail"]
    curated = [c["text"] for c in fixture_run["curated"]]
    assert "smuggled" not in curated and "y" not in curated
    assert by_source[f"{strict}:{STRICT_LINES.index('null') + 1}"]["detail"] == \
        "the line is JSON null, not an object"
    assert by_source[f"{strict}:{STRICT_LINES.index('42') + 1}"]["detail"] == \
        "the line is a JSON BIGINT, not an object"


@pytest.mark.integration
def test_quarantine_rows_are_readable(fixture_run: dict[str, Any]) -> None:
    by_source = {q["source"]: q for q in fixture_run["quarantine"]}
    for q in by_source.values():
        assert q["stage"] == "ingest" and q["detail"] and q["raw"] is not None
    shard = _uri(fixture_run["root"] / "shard" / "a.jsonl")
    assert by_source[f"{shard}:8"]["raw"] == '{"text": "caf\ufffd"}'  # invalid bytes shown
    assert by_source[f"{shard}:16"]["raw"] == '{"text": ' + CARD_MASK + "}"
    assert "BIGINT" in by_source[f"{shard}:11"]["detail"]
    assert "51 characters" in by_source[f"{shard}:13"]["detail"]


@pytest.mark.integration
def test_curated_schema(fixture_run: dict[str, Any]) -> None:
    df = fixture_run["result"].curated
    assert [(f.name, f.dataType) for f in df.schema.fields] == list(CURATED_COLUMNS)
    assert fixture_run["result"].quarantine.columns == ["stage", "source", "reason", "detail",
                                                        "raw"]


@pytest.mark.integration
def test_normalization_and_hashes_match_python(fixture_run: dict[str, Any]) -> None:
    rows = {c["source"]: c for c in fixture_run["curated"]}
    shard = _uri(fixture_run["root"] / "shard" / "a.jsonl")
    nfd = rows[f"{shard}:3"]
    assert nfd["text"] == normalize_text("Cafe\u0301\tna\u0131ve\u200b\u0085end") == \
        "Café naıveend"  # U+0085 is a C1 control: removed, not a space
    assert rows[f"{shard}:1"]["text"] == "Hello world"
    assert rows[f"{shard}:15"]["raw_id"] == "7" and rows[f"{shard}:15"]["label"] == "3"
    assert rows[f"{shard}:1"]["raw_id"] == "r1" and rows[f"{shard}:1"]["label"] == "greet"
    assert rows[_uri(fixture_run["root"] / "txt" / "good.txt")]["label"] is None
    for row in rows.values():
        assert row["n_chars"] == len(row["text"])
        assert row["content_hash"] == content_hash(row["text"])
        assert row["content_hash"] == hashlib.sha256(row["text"].encode()).hexdigest()


@pytest.mark.integration
def test_spark_normalization_on_tricky_strings(fixture_run: dict[str, Any]) -> None:
    rows = {c["source"]: c["text"] for c in fixture_run["curated"]}
    tricky = _uri(fixture_run["root"] / "tricky.jsonl")
    got = {n: rows.get(f"{tricky}:{n}") for n in range(1, len(TRICKY) + 1)}
    want = {n: normalize_text(t) or None for n, t in enumerate(TRICKY, start=1)}
    assert got == want  # None: empty after normalization, so quarantined


@pytest.mark.integration
def test_deterministic_and_relocatable(spark: Any, fixture_run: dict[str, Any],
                                       tmp_path: Path) -> None:
    # A second run over a copy in another place: every id, text and hash is the same, and
    # only the location part of `source` differs.
    moved = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(fixture_run["root"], moved)
    result = ingest_text(spark, CFG, [Location(str(moved))])
    old, new = _uri(fixture_run["root"]), _uri(moved)

    def rel(rows: list[Any], prefix: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(v.replace(prefix, "<root>") if k == "source" else v
                            for k, v in r.asDict().items()) for r in rows)

    assert rel(result.curated.collect(), new) == rel(fixture_run["curated"], old)
    assert rel(result.quarantine.collect(), new) == rel(fixture_run["quarantine"], old)
    ids = [r["doc_id"] for r in fixture_run["curated"]]
    assert len(set(ids)) == len(ids)


@pytest.mark.integration
def test_roots_with_the_same_layout_get_distinct_ids(spark: Any, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-000.jsonl").write_text('{"text": "same"}\n')
        (tmp_path / name / "doc.txt").write_text("same")
    (tmp_path / "single.jsonl").write_text('\n{"text": "same"}\n\n')  # a file as a root
    roots = [Location(str(tmp_path / n)) for n in ("a", "b", "single.jsonl")]
    result = ingest_text(spark, TextInputConfig(), roots)
    rows = result.curated.collect()
    assert result.n_input == len(rows) == 5
    assert len({r["doc_id"] for r in rows}) == 5
    assert len({r["content_hash"] for r in rows}) == 1
    assert f"{_uri(tmp_path / 'single.jsonl')}:2" in {r["source"] for r in rows}


@pytest.mark.integration
def test_read_files_keeps_empty_files(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "full.txt").write_bytes(b"x")
    files = [Location(_uri(tmp_path / "empty.txt")), Location(_uri(tmp_path / "full.txt"))]
    rows = {r["path"]: r for r in read_files(spark, files).collect()}
    assert sorted(rows) == [_uri(tmp_path / "empty.txt"), _uri(tmp_path / "full.txt")]
    assert rows[_uri(tmp_path / "empty.txt")]["length"] == 0
    assert bytes(rows[_uri(tmp_path / "empty.txt")]["content"]) == b""


@pytest.mark.integration
def test_no_inputs(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not an input")
    result = ingest_text(spark, TextInputConfig(), [Location(str(tmp_path))])
    assert result.n_input == 0
    assert result.curated.unionByName(result.quarantine, allowMissingColumns=True).count() == 0


@pytest.mark.integration
def test_synth_ground_truth(spark: Any, tmp_path: Path) -> None:
    synth = pytest.importorskip("pipeline.synth")
    gt = synth.generate(tmp_path, scale=0.1, seed=3, modalities=("text",))
    result = ingest_text(spark, TextInputConfig(), [Location(str(tmp_path / "text"))])
    quarantine = {(q["source"], q["reason"]) for q in result.quarantine.collect()}
    want = {(_uri(tmp_path / b.file) + (f":{b.line}" if b.line is not None else ""), b.reason)
            for b in gt.bad_for("text")}
    assert {r for _, r in want} == set(TEXT_REASONS) - FILE_REASONS  # synth plants these
    assert quarantine == want
    n_curated = result.curated.count()
    assert result.n_input == gt.n_records["text"] == n_curated + len(quarantine)
    assert n_curated == gt.n_good["text"]
