"""Text ingest of the files users have: JSONL variants, compressed files, encodings
(declared and detected), CSV/TSV/Parquet with a text column, names with glob characters."""

from __future__ import annotations

import bz2
import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import TextInputConfig
from pipeline.ingest.text import ingest_text
from pipeline.storage import Location

pytestmark = pytest.mark.integration

W1252 = "Ceci est l’été – déjà vu, naïve “citation” à Noël. " * 4


def _uri(path: Path) -> str:
    return f"file://{path.resolve()}"


def _write(root: Path) -> dict[str, str | None]:
    """The inputs, and source -> expected reason (None: curated)."""
    exp: dict[str, str | None] = {}

    def put(name: str, data: bytes) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # Glob characters are ordinary names: each file read once, by its own name.
    for name in ("a1.jsonl", "a[1].jsonl", "b{x}.ndjson", "c?.json"):
        exp[_uri(put(name, b'{"text": "from %s"}\n' % name.encode())) + ":1"] = None
    lines = b'{"text": "one"}\n\n{"text": "two"}\n'
    for name, data in (("z/g.jsonl.gz", gzip.compress(lines)),
                       ("z/b.jsonl.bz2", bz2.compress(lines)),
                       ("z/s.jsonl.zst", pa.compress(lines, "zstd", asbytes=True))):
        path = put(name, data)
        exp[_uri(path) + ":1"] = exp[_uri(path) + ":3"] = None
    # Mixed encodings, detected per file.
    exp[_uri(put("enc/w.txt", W1252.encode("cp1252")))] = None
    exp[_uri(put("enc/u.txt", W1252.encode("utf-8")))] = None
    line = json.dumps({"text": W1252}, ensure_ascii=False) + "\n"
    exp[_uri(put("enc/w.jsonl", line.encode("cp1252"))) + ":1"] = None
    # A truncated .gz: the lines before the break are kept, then UNREADABLE_FILE.
    packed = gzip.compress(b"".join(b'{"text": "t%d"}\n' % i for i in range(20000)))
    exp["trunc"] = "UNREADABLE_FILE"  # resolved in the test (its line is where it broke)
    put("z/trunc.jsonl.gz", packed[: len(packed) // 2])
    # Tables: the text column by name, quoted newlines, a malformed row, a missing column.
    put("t/data.csv", b'id,text,label\n1,"multi\nline ""text""",pos\n'
        b"2,only,two,many\n3,plain,neg\n")
    exp["csv"] = "MALFORMED_ROW"  # resolved in the test: see test_csv_rows
    tsv = put("t/data.tsv.gz", gzip.compress(b"text\tlabel\ntab separated\tx\n"))
    exp[_uri(tsv) + ":1"] = None
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": ["hf row one", None, "hf row three"],
                             "label": [0, 1, 0]}), buf)
    hf = put("t/train-00000-of-00001.parquet", buf.getvalue().to_pybytes())
    exp[_uri(hf) + ":1"] = exp[_uri(hf) + ":3"] = None
    exp[_uri(hf) + ":2"] = "MISSING_FIELD"
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"content": ["no text column"]}), buf)
    exp[_uri(put("t/other.parquet", buf.getvalue().to_pybytes())) + ":1"] = "MISSING_FIELD"
    exp[_uri(put("t/corrupt.parquet", b"PAR1 not really")) + ":1"] = "UNREADABLE_FILE"
    # Excluded by the default rules, and not text at all: not ingest_text's records.
    put(".hidden.jsonl", b'{"text": "hidden"}\n')
    put("_SUCCESS", b"")
    put("notes.md", b"# notes\n")
    return exp


@pytest.fixture(scope="module")
def run(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("formats")
    expected = _write(root)
    result = ingest_text(spark, TextInputConfig(encoding="auto"), [Location(str(root))])
    curated = result.curated.collect()
    quarantine = result.quarantine.collect()
    assert result.figures is not None
    return {"root": root, "expected": expected, "result": result, "curated": curated,
            "quarantine": quarantine, "figures": result.figures()}


def test_every_record_has_its_outcome(run: dict[str, Any]) -> None:
    # Issue 13.2: `a1.jsonl` beside `a[1].jsonl` was read twice, `a[1].jsonl` never.
    sources = [c["source"] for c in run["curated"]] + [q["source"] for q in run["quarantine"]]
    assert len(sources) == len(set(sources))
    got: dict[str, str | None] = {c["source"]: None for c in run["curated"]}
    trunc = _uri(run["root"] / "z/trunc.jsonl.gz")
    kept = [s for s in got if s.startswith(trunc + ":")]
    assert 0 < len(kept) < 20000
    assert sorted(kept) == sorted(f"{trunc}:{n}" for n in range(1, len(kept) + 1))
    breaks = {q["source"]: q["reason"] for q in run["quarantine"]
              if q["source"].startswith(trunc)}
    # The line the break cut in two is malformed; then one row says where it broke.
    assert breaks == {f"{trunc}:{len(kept) + 1}": "MALFORMED_JSON",
                      f"{trunc}:{len(kept) + 2}": "UNREADABLE_FILE"}
    csv = _uri(run["root"] / "t/data.csv")
    for source in kept + [s for s in got if s.startswith(csv)]:
        del got[source]
    got.update({q["source"]: q["reason"] for q in run["quarantine"]
                if not q["source"].startswith((trunc, csv))})
    expected = {k: v for k, v in run["expected"].items() if k not in ("trunc", "csv")}
    assert got == expected
    n_out = len(run["curated"]) + len(run["quarantine"])
    assert run["result"].n_input == n_out


def test_texts_are_decoded_and_tables_carry_their_columns(run: dict[str, Any]) -> None:
    rows = {c["source"]: c for c in run["curated"]}
    root = run["root"]
    want = W1252.strip()
    assert rows[_uri(root / "enc/w.txt")]["text"] == want
    assert rows[_uri(root / "enc/u.txt")]["text"] == want
    assert rows[_uri(root / "enc/w.jsonl") + ":1"]["text"] == want
    assert rows[_uri(root / "a[1].jsonl") + ":1"]["text"] == "from a[1].jsonl"
    hf = rows[_uri(root / "t/train-00000-of-00001.parquet") + ":3"]
    assert (hf["text"], hf["label"]) == ("hf row three", "0")
    assert run["figures"]["encodings"]["utf-8"] >= 8
    assert run["figures"]["encodings"]["cp1252"] == 2
    assert run["figures"]["encodings"]["parquet"] == 3


def test_a_declared_encoding_quarantines_undecodable_lines(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "w.jsonl").write_bytes('{"text": "été"}\n'.encode("cp1252")
                                       + b'{"text": "\x81"}\n')
    result = ingest_text(spark, TextInputConfig(encoding="cp1252"), [Location(str(tmp_path))])
    assert [c["text"] for c in result.curated.collect()] == ["été"]
    (bad,) = result.quarantine.collect()
    assert bad["reason"] == "INVALID_ENCODING" and "cp1252" in bad["detail"]
    assert result.n_input == 2
    # Read as UTF-8 (the default), the same file is INVALID_UTF8 twice.
    plain = ingest_text(spark, TextInputConfig(), [Location(str(tmp_path))])
    assert [q["reason"] for q in plain.quarantine.collect()] == ["INVALID_UTF8"] * 2


def test_csv_rows(run: dict[str, Any]) -> None:
    csv = _uri(run["root"] / "t/data.csv")
    rows = sorted((c["source"], c["text"], c["raw_id"], c["label"]) for c in run["curated"]
                  if c["source"].startswith(csv + ":"))
    assert rows[0] == (csv + ":1", 'multi line "text"', "1", "pos")
    assert [r[1:] for r in rows] == [('multi line "text"', "1", "pos"), ("plain", "3", "neg")]
    (bad,) = [q for q in run["quarantine"] if q["source"].startswith(csv)]
    # pyarrow does not always know a malformed row's number: then the source is the file.
    assert bad["reason"] == "MALFORMED_ROW" and bad["raw"] == "2,only,two,many"
    assert bad["source"] in (csv, csv + ":2")
