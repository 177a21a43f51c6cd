"""`pipeline inspect` and the declared transaction schema's config checks (no Spark)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, config_from_dict
from pipeline.config_transactions import strftime_to_spark
from pipeline.inspect import detect_modality, inspect

sys.path.insert(0, str(Path(__file__).parent / "modalities"))
import tables  # the four table shapes, shared with the pipeline runs

pytestmark = pytest.mark.unit


def _block(path: Path) -> dict[str, object]:
    out = yaml.safe_load(inspect([str(path)]))
    schema = out["inputs"]["transactions"]["schema"]
    assert isinstance(schema, dict)
    return schema


def test_card_fraud_guesses(tmp_path: Path) -> None:
    s = _block(tables.write_card_fraud(tmp_path, n=80).path)
    assert (s["format"], s["delimiter"], s["header"]) == ("csv", ",", True)
    assert (s["amount"], s["timestamp"], s["timestamp_format"], s["label"]) == (
        "Amount", "Time", "seconds", "Class")
    assert s["features"] == {"numeric": [f"V{i}" for i in range(1, 29)]}
    text = inspect([str(tmp_path / "creditcard.csv")])
    assert "min_amount: 0" in text
    assert 'timestamp_origin: "1970-01-01T00:00:00Z"  # unsure' in text


def test_credit_default_keeps_bill_amounts_as_features(tmp_path: Path) -> None:
    s = _block(tables.write_credit_default(tmp_path, n=60).path)
    assert (s["id"], s["label"]) == ("ID", "default.payment.next.month")
    assert "amount" not in s and "BILL_AMT1" in s["features"]["numeric"]  # type: ignore[index]
    assert len(s["features"]["numeric"]) == 23  # type: ignore[index]


def test_bank_statement_and_purchase_log(tmp_path: Path) -> None:
    s = _block(tables.write_bank_statement(tmp_path, n=60).path)
    assert (s["delimiter"], s["id"], s["account"], s["timestamp_format"]) == (
        ";", "trans_id", "account_id", "%y%m%d")
    assert "label" not in s
    assert s["features"] == {"numeric": ["balance"],
                             "categorical": ["type", "operation", "k_symbol"]}
    path = tables.write_purchase_log(tmp_path, n=60, dups=3).path
    text = inspect([str(path)])
    s = _block(path)
    assert (s["format"], s["header"], s["timestamp_format"]) == ("whitespace", False, "%Y%m%d")
    assert (s["account"], s["timestamp"], s["amount"]) == ("column_1", "column_2", "column_4")
    assert 'account: "column_1"  # unsure:' in text
    assert detect_modality([str(path)]) == "transactions"


def test_every_inspected_block_is_a_valid_config(tmp_path: Path) -> None:
    for w in (tables.write_card_fraud(tmp_path / "a", n=40),
              tables.write_credit_default(tmp_path / "b", n=40),
              tables.write_bank_statement(tmp_path / "c", n=40),
              tables.write_purchase_log(tmp_path / "d", n=40, dups=2)):
        cfg = config_from_dict(yaml.safe_load(inspect([str(w.path)])))
        assert cfg.inputs.transactions.schema is not None


def test_text_and_image_folders(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("plain UTF-8 text, caf\u00e9\n" * 20, encoding="utf-8")
    (docs / "b.txt").write_bytes(("Windows text, caf\u00e9 na\u00efve \u2014 "
                                  "r\u00e9sum\u00e9 \u00e0 la carte\n" * 20).encode("cp1252"))
    out = inspect([str(docs)])
    assert detect_modality([str(docs)]) == "text"
    assert yaml.safe_load(out)["inputs"]["text"]["encoding"] == "auto"
    images = tmp_path / "imgs"
    images.mkdir()
    for name in ("a.png", "b.ppm"):
        (images / name).write_bytes(b"\x89PNG")
    assert "unlabeled" in inspect([str(images)])
    assert yaml.safe_load(inspect([str(images)], "images"))["inputs"]["images"]["paths"]


def test_strftime_patterns() -> None:
    assert strftime_to_spark("%y%m%d") == "yyMMdd"
    assert strftime_to_spark("%d/%m/%Y %H:%M") == "dd/MM/yyyy HH:mm"
    with pytest.raises(ValueError, match="%Q"):
        strftime_to_spark("%Q")


def test_schema_problems_are_reported_with_their_keys() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"inputs": {"transactions": {"schema": {
            "format": "whitespace", "header": False, "amount": "amt", "pii": ["amt"],
            "timestamp": "t", "timestamp_format": "seconds", "currency_constant": "XXZ",
            "required": ["amount", "colour"],
            "features": {"numeric": ["a.b", "a_b"], "categorical": ["Amount"]}}}}})
    text = str(err.value)
    for expected in ("schema.columns: a file without a header needs",
                     "schema.pii: 'amt' must be",
                     "schema.timestamp_origin: timestamp_format 'seconds'",
                     "schema.currency_constant: 'XXZ' is not an ISO 4217 code",
                     "schema.required: 'colour' is not a role",
                     "give the same curated column 'a_b'",
                     "column 'Amount' would be curated as 'Amount'"):
        assert expected in text, text


def test_parquet_table(tmp_path: Path) -> None:
    from datetime import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({
        "txn_id": ["a", "b"], "amount": [1.5, 2.0], "fraud": [0, 1],
        "ts": pa.array([datetime(2024, 1, 2)] * 2, pa.timestamp("us"))}), path)
    text = inspect([str(path)])
    s = yaml.safe_load(text)["inputs"]["transactions"]["schema"]
    assert (s["format"], s["id"], s["amount"], s["label"], s["timestamp"]) == (
        "parquet", "txn_id", "amount", "fraud", "ts")
    assert 'timezone: "UTC"  # unsure' in text and "# rows (estimate): 2" in text
