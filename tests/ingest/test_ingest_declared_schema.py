"""Transaction ingest of declared schemas: delimiters, headerless whitespace lines,
timestamp formats (strftime with the %y pivot, epoch, seconds from an origin), unmapped
roles as nulls, PII tokens, ids from file and line, and the reasons of bad rows."""

from __future__ import annotations

import hashlib
import hmac
import posixpath
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import TransactionInputConfig, config_from_dict
from pipeline.ingest.tokens import TOKEN_HEX_CHARS
from pipeline.ingest.transactions import (
    CsvHeaderError,
    curated_ddl,
    ingest_transactions,
)
from pipeline.storage import Location

pytestmark = pytest.mark.integration
KEY = b"declared-schema-test-key-0123456789"


def _cfg(schema: dict[str, Any], **extra: Any) -> TransactionInputConfig:
    return config_from_dict({"inputs": {"transactions": {"schema": schema, **extra}}}
                            ).inputs.transactions


def _run(spark: Any, cfg: TransactionInputConfig, root: Path) -> dict[str, Any]:
    res = ingest_transactions(spark, cfg, [Location(str(root))], KEY)
    curated = [r.asDict() for r in res.curated.collect()]
    quarantine = {}
    for r in res.quarantine.collect():
        tail = r["source"].rsplit(":", 1)[-1]
        quarantine[tail if tail.isdigit() else posixpath.basename(r["source"])] = r.asDict()
    assert res.n_input == len(curated) + len(quarantine)
    return {"curated": sorted(curated, key=lambda r: r["source"]), "q": quarantine,
            "columns": res.curated.columns, "n": res.n_input}


def test_semicolon_statement_with_yymmdd_dates_and_pii(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(
        '"id";"acct";"date";"amount";"who";"kind";"bal"\n'
        '1;"A1";"930105";"10.5";"Annabel";"PRIJEM";"100"\n'
        '2;"A1";"000229";"3";"Bobby";"";""\n'                 # 2000-02-29: %y 00 is 2000
        '3;"A2";"931332";"1";"Cyrus";"VYDAJ";"5"\n'             # no 13th month
        '4;"A2";"930105";"-1";"Diana";"VYDAJ";"5"\n'            # negative amount
        '5;"A2";"930105";"2";"Edward";"VYDAJ";"x"\n'             # balance not a number
        '6;"A3";"930105"\n')                                 # too few columns
    (tmp_path / "notes.json").write_text("{}\n")            # not this format
    cfg = _cfg({"format": "csv", "delimiter": ";", "id": "id", "account": "acct",
                "timestamp": "date", "timestamp_format": "%y%m%d", "amount": "amount",
                "currency_constant": "czk", "pii": ["who"], "required": ["id", "amount"],
                "features": {"numeric": ["bal"], "categorical": ["who", "kind"]}})
    out = _run(spark, cfg, tmp_path)
    assert out["columns"] == [c.split()[0].strip("`") for c in curated_ddl(
        cfg.table_schema).split(", ")]
    good = out["curated"]
    assert [r["txn_id"] for r in good] == ["1", "2"]
    assert [str(r["ts"].date()) for r in good] == ["1993-01-05", "2000-02-29"]
    assert {r["currency"] for r in good} == {"CZK"}
    assert good[0]["card_token"] is None and good[0]["mcc"] is None
    assert good[0]["is_fraud"] is None
    expected = hmac.new(KEY, b"who:Annabel", hashlib.sha256).hexdigest()[:TOKEN_HEX_CHARS]
    assert good[0]["who"] == expected
    assert (good[1]["kind"], good[1]["bal"]) == (None, None)  # empty fields are null
    reasons = {line: q["reason"] for line, q in out["q"].items()}
    assert reasons == {"4": "BAD_TIMESTAMP", "5": "AMOUNT_OUT_OF_RANGE", "6": "BAD_FIELD",
                       "7": "MALFORMED_ROW", "notes.json": "UNSUPPORTED_FILE"}
    assert "Edward" not in str(out["q"]) and "[PII]" in out["q"]["6"]["raw"]


def test_headerless_whitespace_log_with_made_up_ids(spark: Any, tmp_path: Path) -> None:
    lines = ["  00001 19970101  1  11.77", "  00001 19970101  1  11.77",
             "00002 19970112 2 x", "00003 1997011 2 1.00", "00004 19970105 2"]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    cfg = _cfg({"format": "whitespace", "header": False,
                "columns": ["cust", "date", "qty", "amt"], "account": "cust",
                "timestamp": "date", "timestamp_format": "%Y%m%d", "amount": "amt",
                "features": {"numeric": ["qty"]}}, min_amount=0)
    out = _run(spark, cfg, tmp_path)
    a, b = out["curated"]
    assert a["txn_id"] != b["txn_id"] and len(a["txn_id"]) == 16
    assert a["content_hash"] == b["content_hash"]  # exact copies: one hash for dedup
    assert (a["qty"], str(a["amount"]), a["currency"]) == (1.0, "11.77", None)
    again = _run(spark, cfg, tmp_path)
    assert [r["txn_id"] for r in again["curated"]] == [a["txn_id"], b["txn_id"]]
    assert {k: q["reason"] for k, q in out["q"].items()} == {
        "3": "BAD_AMOUNT", "4": "BAD_TIMESTAMP", "5": "MALFORMED_ROW"}


def test_epoch_and_seconds_from_origin(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("Time,Amount,Class\n0.0,1.00,0\n90061.5,0.00,1\n")
    out = _run(spark, _cfg({"format": "csv", "timestamp": "Time",
                            "timestamp_format": "seconds",
                            "timestamp_origin": "2013-09-01T00:00:00Z",
                            "amount": "Amount", "label": "Class"}, min_amount=0), tmp_path)
    assert [r["ts"].isoformat() for r in out["curated"]] == [
        "2013-09-01T00:00:00", "2013-09-02T01:01:01.500000"]
    assert [r["is_fraud"] for r in out["curated"]] == [False, True]
    (tmp_path / "a.csv").write_text("ts,amount\n1736071200000,5\n")
    out = _run(spark, _cfg({"format": "csv", "timestamp": "ts", "timestamp_format": "epoch_ms",
                            "amount": "amount"}), tmp_path)
    assert out["curated"][0]["ts"].isoformat() == "2025-01-05T10:00:00"


def test_a_header_without_a_mapped_column_is_an_error(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("when,value\n2026-01-01T00:00:00Z,1\n")
    with pytest.raises(CsvHeaderError, match="no column amount"):
        _run(spark, _cfg({"format": "csv", "amount": "amount"}), tmp_path)


def test_parquet_table_rows_with_typed_columns(spark: Any, tmp_path: Path) -> None:
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "id": ["a", "b", "c"], "amt": [12.5, 0.25, -3.0],
        "when": pa.array([datetime(2024, 1, 2, 3, 4, 5)] * 3, pa.timestamp("us")),
        "fraud": [0, 1, 0], "score": [1.5, None, 2.0]}), tmp_path / "t.parquet")
    cfg = _cfg({"format": "parquet", "id": "id", "amount": "amt", "timestamp": "when",
                "timezone": "UTC", "label": "fraud", "features": {"numeric": ["score"]}})
    out = _run(spark, cfg, tmp_path)
    good = out["curated"]
    assert [(r["txn_id"], str(r["amount"]), r["is_fraud"], r["score"]) for r in good] == [
        ("a", "12.50", False, 1.5), ("b", "0.25", True, None)]
    assert good[0]["ts"].isoformat() == "2024-01-02T03:04:05"
    assert good[0]["source"].endswith("t.parquet:1")
    assert {k: q["reason"] for k, q in out["q"].items()} == {"3": "AMOUNT_OUT_OF_RANGE"}
    assert out["q"]["3"]["raw"] == "c,-3,2024-01-02 03:04:05.000000,0,2"
