"""Hostile transaction inputs through ingest and dedup: every record gets its fate.

The corpus is built here in a temporary folder (a few KB): broken, truncated, oversized,
lying about their type, mis-encoded, adversarial for the CSV and JSON parsers, and named
to break paths. `expected` maps `<file>:<line>` to the reason the record must be
quarantined with, or None when it must be curated. The one test runs
`ingest/transactions` and `dedup/transactions` through the runner: no stage fails, every
record comes out with its expected reason, nothing else is curated, and dedup accounts
for every curated record (kept, duplicate, or quarantined as LABEL_CONFLICT).
"""

from __future__ import annotations

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

pytestmark = pytest.mark.integration

COLUMNS = ("txn_id", "account", "card_number", "amount", "currency", "timestamp", "merchant",
           "mcc", "country", "is_fraud")
HEADER = ",".join(COLUMNS).encode()
CARD, CARD2 = "4111111111111111", "5500000000000004"
MALFORMED, MISSING, AMOUNT, RANGE, TS, CUR, BAD_CARD, FIELD = (
    "MALFORMED_ROW", "MISSING_FIELD", "BAD_AMOUNT", "AMOUNT_OUT_OF_RANGE", "BAD_TIMESTAMP",
    "UNKNOWN_CURRENCY", "BAD_CARD", "BAD_FIELD")

_n = iter(range(1, 10_000))


def _row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"txn_id": f"h{next(_n)}", "account": "acct-1", "card_number": CARD,
                           "amount": "12.50", "currency": "EUR",
                           "timestamp": "2026-01-05T10:00:00Z", "merchant": "Shop",
                           "mcc": "5411", "country": "FR", "is_fraud": "0"}
    row.update(over)
    return row


def _csv(**over: Any) -> bytes:
    return ",".join(str(v) for v in _row(**over).values()).encode()


def _json(**over: Any) -> bytes:
    return json.dumps(_row(**over)).encode()


def _file(*lines: tuple[bytes, str | None], header: bool = False, end: bytes = b"\n"
          ) -> tuple[bytes, dict[int, str | None]]:
    """File bytes and {line number: reason}; a header (when asked) is line 1."""
    body = ([HEADER] if header else []) + [line for line, _ in lines]
    start = 2 if header else 1
    return b"\n".join(body) + end, {start + i: r for i, (_, r) in enumerate(lines)}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (3, 2), (10, 200, 10)).save(buf, format="PNG")
    return buf.getvalue()


def _corpus() -> dict[str, tuple[bytes, dict[int, str | None]]]:
    dup = _csv(txn_id="dup-1")
    conflict = _row(txn_id="conflict-1")
    files = {
        # Broken CSV rows: column counts, quotes, a quoted newline (two broken lines).
        "broken.csv": _file(
            (_csv(), None), (b",".join(_csv().split(b",")[:9]), MALFORMED),
            (_csv() + b",EXTRA", MALFORMED), (_csv(merchant='"Shop'), MALFORMED),
            (b",".join(_csv().split(b",")[:6]) + b',"Two', MALFORMED),  # a quoted newline
            (b'Lines",5411,FR,0', MALFORMED),
            header=True),
        # Truncated: the last row is cut and has no newline.
        "truncated.csv": _file((_csv(), None), (_csv()[:30], MALFORMED), header=True, end=b""),
        # Oversized values: a 40-digit amount, a 25-digit card, a 5000-character merchant.
        "oversized.csv": _file(
            (_csv(amount="1" * 40), RANGE), (_csv(card_number="4" * 25), BAD_CARD),
            (_csv(merchant="M" * 5000), None), header=True),
        # Values that parse in other languages: exponents, NaN, locales, impossible dates.
        "values.csv": _file(
            (_csv(amount="1e3"), AMOUNT), (_csv(amount="NaN"), AMOUNT),
            (_csv(amount="Infinity"), AMOUNT), (_csv(amount="0x10"), AMOUNT),
            (_csv(amount="-0.00"), RANGE),
            (_csv(timestamp="2026-02-30T00:00:00Z"), TS),
            (_csv(timestamp="2026-01-05T10:00:00"), TS),
            (_csv(timestamp="99999-01-05T10:00:00Z"), TS),
            (_csv(currency="EURO"), CUR), (_csv(currency="eur"), None),
            (_csv(card_number="4111-1111-1111-111X"), BAD_CARD),
            (_csv(card_number="4111111111111112"), BAD_CARD),
            (_csv(mcc="54111"), FIELD), (_csv(is_fraud="yes"), FIELD),
            (_csv(country="F1"), FIELD), (_csv(account=" "), MISSING),
            # Quotes inside an unquoted field are taken literally (as Python's csv does).
            (_csv(merchant="=HYPERLINK(\"http://x\")"), None),
            (_csv(merchant="=cmd|' /C calc'!A0"), None),  # formula text is only text
            header=True),
        # Bytes: a BOM before the header, NUL bytes, Latin-1, CRLF endings.
        "bytes.csv": (b"\xef\xbb\xbf" + HEADER + b"\r\n" + _csv(merchant="Nul\x00Shop") + b"\r\n"
                      + _csv(merchant="Caf\u00e9").replace("é".encode(), b"\xe9") + b"\r\n"
                      + _csv() + b"\r\n", {2: None, 3: MALFORMED, 4: None}),
        # Duplicates for dedup: an exact copy, and a copy that disagrees on the label.
        "dups.csv": _file((dup, None), (dup, None), (_csv(**conflict), None),
                          (_csv(**{**conflict, "is_fraud": "1"}), None), header=True),
        "empty.csv": (b"", {}),
        "header_only.csv": _file(header=True),
        # JSON Lines: trailing content, parser limits, types, shapes.
        "parser.jsonl": _file(
            (_json(), None), (_json() + b"] garbage", MALFORMED),
            (_json() + b', "~"] garbage', MALFORMED), (_json() + b" " + _json(), MALFORMED),
            (_json()[:-1] + b', "txn_id": "dup-key"}', MALFORMED),
            (_json().replace(b'"12.50"', b"NaN"), MALFORMED),
            (_json()[:-1] + b', "deep": ' + b"[" * 1500 + b"]" * 1500 + b"}", MALFORMED),
            (_json()[:-1] + b', "huge": ' + b"9" * 1500 + b"}", MALFORMED),
            (_json().replace(b'"12.50"', b"12.5"), None),  # a JSON number, taken exactly
            (_json().replace(b'"12.50"', b"1e400"), AMOUNT),
            (b"[" + _json() + b"]", MALFORMED), (b'"a string"', MALFORMED),
            (b"{}", MISSING), (b"\xef\xbb\xbf" + _json(), None),
            (_json().replace(b'"acct-1"', b'"acct\\u0000"'), None),
            (_json().replace(b'"Shop"', b'"\\ud800"'), MALFORMED),  # a lone surrogate
        ),
        # Lying about their type: CSV rows in a .jsonl file, a PNG named .jsonl.
        "rows.jsonl": _file((_csv(), MALFORMED), (HEADER, MALFORMED)),
        "cr_only.jsonl": _file((_json() + b"\r" + _json(), MALFORMED)),
        # Mis-encoded: UTF-16 JSON Lines.
        "utf16.jsonl": ((_json() + b"\n").decode().encode("utf-16"), {}),
        # Names that break paths (glob characters: GLOB_NAMES).
        "a b.csv": _file((_csv(), None), header=True),
        "ünï©ødé.jsonl": _file((_json(), None)),
        "100%.jsonl": _file((_json(), None)),
        "e#frag.csv": _file((_csv(), None), header=True),
    }
    image = _png()
    files["image.jsonl"] = (image, {no: MALFORMED for no, line in
                                    enumerate(image.split(b"\n"), start=1)
                                    if line.rstrip(b"\r").strip(b" \t\n\r\x0b\x0c")})
    wide = files["utf16.jsonl"][0]
    files["utf16.jsonl"] = (wide, {no: MALFORMED for no, line in
                                   enumerate(wide.split(b"\n"), start=1)
                                   if line.rstrip(b"\r").strip(b" \t\n\r\x0b\x0c")})
    return files


GLOB_NAMES = {"a[1].jsonl": _json(txn_id="g1"), "a1.jsonl": _json(txn_id="g2"),
              "b{x,y}.jsonl": _json(txn_id="g3"), "c?.jsonl": _json(txn_id="g4"),
              "d*.jsonl": _json(txn_id="g5")}


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


def _run(tmp: Path, monkeypatch: pytest.MonkeyPatch
         ) -> tuple[dict[str, str | None], dict[str, Any]]:
    monkeypatch.setenv("PIPELINE_HMAC_KEY", "hostile-suite-test-key")
    raw = tmp / "raw"
    raw.mkdir()
    # Glob characters in names are literal names (Spark's reader would expand them).
    corpus = {**_corpus(), **{n: (d + b"\n", {1: None}) for n, d in GLOB_NAMES.items()}}
    expected: dict[str, str | None] = {}
    for name, (data, fate) in corpus.items():
        (raw / name).write_bytes(data)
        expected.update({f"{name}:{no}": r for no, r in fate.items()})
    cfg = config_from_dict({
        "run_id": "hostile", "storage": {"root": f"file://{tmp / 'out'}"},
        "modalities": ["transactions"], "spark": {"shuffle_partitions": 2},
        "inputs": {"transactions": {"paths": [str(raw)]}},
        "gates": {"max_quarantine_rate": 1.0, "max_duplicate_rate": 1.0}})
    outcomes = run_pipeline(cfg, [synth_stage(), ingest_stage("transactions"),
                                  dedup_stage("transactions")])
    states = {o.name: o.state for o in outcomes if o.name != "synth"}
    assert states == {"ingest/transactions": "ran", "dedup/transactions": "ran"}
    run = RunPaths(Location(f"file://{tmp / 'out'}"), "hostile")
    prefix = f"file://{raw}/"

    def rel(source: str) -> str:
        assert source.startswith(prefix), source
        return source[len(prefix):]

    ingest, dedup = run.stage("ingest/transactions"), run.stage("dedup/transactions")
    curated = _rows(ingest, "curated/")
    got: dict[str, str | None] = {rel(q["source"]): q["reason"]
                                  for q in _rows(ingest, "quarantine/")}
    got.update({rel(c["source"]): None for c in curated})
    return expected, {"got": got, "curated": curated, "ingest": verify_stage(ingest),
                      "dedup": verify_stage(dedup), "kept": _rows(dedup, "data/"),
                      "dups": _rows(dedup, "duplicates/"),
                      "dedup_quarantine": _rows(dedup, "quarantine/"), "rel": rel}


def test_hostile_transactions_through_ingest_and_dedup(spark: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    expected, out = _run(tmp_path, monkeypatch)
    assert len({key.split(":")[0] for key in expected}) >= 15
    assert _mismatches(out["got"], expected) == {}
    counts = out["ingest"].row_counts
    assert counts["input"] == len(expected) == counts["curated"] + counts["quarantined"]
    assert not any(CARD in str(v) or CARD2 in str(v) for c in out["curated"]
                   for v in c.values())
    # Dedup accounts for every curated record; the exact copy is dropped, the two rows
    # that disagree on the label are quarantined.
    sources = {c["source"] for c in out["curated"]}
    kept = {r["source"] for r in out["kept"]}
    dropped = {d["dropped_id"] for d in out["dups"]}
    conflict = {out["rel"](q["source"]): q["reason"] for q in out["dedup_quarantine"]}
    assert set(conflict.values()) == {"LABEL_CONFLICT"} and len(conflict) == 2
    assert kept | dropped | {f"file://{tmp_path}/raw/{k}" for k in conflict} == sources
    assert len(kept) + len(dropped) + len(conflict) == len(sources)
    assert {out["rel"](d) for d in dropped} & {"dups.csv:2", "dups.csv:3"}
