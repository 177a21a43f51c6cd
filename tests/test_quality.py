"""Quality figures from Spark aggregates, and gates that pass or fail with clear messages."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from pipeline.config import GatesConfig
from pipeline.gates import QualityGateError, check_gates, enforce_gates, evaluate_gates
from pipeline.quality import quality_figures

DUP_SCHEMA = "dropped_id string, kept_id string, rule string, similarity double, cluster_id string"
Q_SCHEMA = "stage string, source string, reason string, detail string, raw string"


def _figures(modality: str, quarantined: float, duplicated: float) -> dict:
    return {"modality": modality,
            "quarantine_rate": {"total": quarantined, "by_reason": {}},
            "duplicate_rate": {"total": duplicated, "by_rule": {}}}


@pytest.mark.integration
def test_transaction_figures(spark) -> None:  # type: ignore[no-untyped-def]
    t0 = dt.datetime(2026, 1, 5, tzinfo=dt.UTC)
    rows = [(f"t{i}", f"acc-{i % 3}", Decimal(f"{i + 1}.50"), "EUR" if i % 2 else "USD",
             t0 + dt.timedelta(hours=i), "" if i == 0 else "Shop", i % 4 == 0, "train")
            for i in range(8)]
    kept = spark.createDataFrame(rows, "txn_id string, account_token string, amount "
                                 "decimal(18,2), currency string, ts timestamp, merchant "
                                 "string, is_fraud boolean, split string")
    dups = spark.createDataFrame([("s1", "t1", "txn_exact", 1.0, "t1"),
                                  ("s2", "t2", "txn_replay", 1.0, "t2")], DUP_SCHEMA)
    quarantine = spark.createDataFrame([("dedup", "s3", "LABEL_CONFLICT", "d", "r"),
                                        ("ingest", "s4", "BAD_AMOUNT", "d", "r")], Q_SCHEMA)
    fig = quality_figures("transactions", kept, duplicates=dups, quarantine=quarantine)
    assert fig["rows"] == {"input": 12, "curated": 8, "duplicates": 2, "quarantined": 2,
                           "reconciles": True}
    assert fig["completeness"]["merchant"] == pytest.approx(1 / 8)  # one empty string
    assert fig["completeness"]["txn_id"] == 0.0
    assert fig["duplicate_rate"]["by_rule"] == {"txn_exact": 1 / 12, "txn_replay": 1 / 12}
    assert fig["quarantine_rate"]["total"] == pytest.approx(2 / 12)
    assert fig["label_balance"]["fraud_rate"] == pytest.approx(2 / 8)
    amount = fig["value_ranges"]["amount"]
    assert (amount["min"], amount["max"]) == (1.5, 8.5)
    assert amount["min"] <= amount["quantiles"]["p50"] <= amount["max"]
    assert fig["consistency"]["currencies"] == {"EUR": 4, "USD": 4}
    assert fig["consistency"]["split_fractions"]["train"] == 1.0
    json.dumps(fig)  # plain, JSON-ready values only
    assert check_gates(fig, GatesConfig(max_quarantine_rate=0.2, max_duplicate_rate=0.5)) == []
    failures = check_gates(fig, GatesConfig(max_quarantine_rate=0.1))
    assert [f.gate for f in failures] == ["max_quarantine_rate"]


@pytest.mark.integration
def test_image_and_text_figures(spark) -> None:  # type: ignore[no-untyped-def]
    images = spark.createDataFrame(
        [("i1", "file:///raw/circle/a.png", bytearray(b"x" * 10), "PNG", 32, 48, 3, "circle"),
         ("i2", "file:///raw/square/b.png", bytearray(b"x" * 30), "JPEG", 64, 16, 1, "square"),
         ("i3", "file:///raw/square/c.jpg", bytearray(b"x" * 20), "JPEG", 8, 8, 3, "square")],
        "image_id string, source string, bytes binary, format string, width int, height int, "
        "channels int, label string")
    fig = quality_figures("images", images, n_input=4)
    assert fig["rows"]["reconciles"] is False  # 4 inputs, 3 accounted for
    assert fig["label_balance"]["counts"] == {"circle": 1, "square": 2}
    assert fig["value_ranges"]["width"]["min"] == 8 and fig["value_ranges"]["width"]["max"] == 64
    assert fig["value_ranges"]["n_bytes"]["max"] == 30
    assert fig["consistency"]["extension_mismatch"] == pytest.approx(1 / 3)  # JPEG in .png
    assert fig["consistency"]["formats"] == {"PNG": 1, "JPEG": 2}

    text = spark.createDataFrame([("d1", "hello world", 11, None), ("d2", "abc", 4, "pos")],
                                 "doc_id string, text string, n_chars int, label string")
    tfig = quality_figures("text", text)
    assert tfig["consistency"]["n_chars_mismatch"] == 0.5
    assert tfig["completeness"]["label"] == 0.5
    assert tfig["label_balance"]["counts"] == {"<null>": 1, "pos": 1}
    assert tfig["value_ranges"]["n_chars"]["max"] == 11


@pytest.mark.unit
def test_gate_failure_message_names_figure_value_threshold() -> None:
    with pytest.raises(QualityGateError) as err:
        enforce_gates(_figures("transactions", 0.31, 0.1), GatesConfig(max_quarantine_rate=0.2))
    assert str(err.value) == ("gate max_quarantine_rate failed for transactions: "
                              "quarantine rate 0.31 > 0.20")
    assert err.value.failures[0].value == 0.31


@pytest.mark.unit
def test_gates_pass_and_report_every_result() -> None:
    results = enforce_gates(_figures("text", 0.05, 0.1), GatesConfig())
    assert {r.gate for r in results} == {"max_quarantine_rate", "max_duplicate_rate"}
    assert all(r.passed for r in results)
    assert "passed for text" in results[0].message


@pytest.mark.unit
def test_several_modalities_and_metric_gates() -> None:
    figures = {
        "images": {**_figures("images", 0.0, 0.6), "metrics": {"accuracy": 0.4}},
        "transactions": {**_figures("transactions", 0.0, 0.0), "metrics": {"pr_auc": 0.9}},
        "text": {**_figures("text", 0.0, 0.0), "metrics": {"bits_per_byte": 20.0}},
    }
    gates = GatesConfig(min_image_accuracy=0.5, min_fraud_pr_auc=0.5)
    failures = check_gates(figures, gates)
    assert sorted((f.modality, f.gate) for f in failures) == [
        ("images", "max_duplicate_rate"), ("images", "min_image_accuracy"),
        ("text", "max_text_bits_per_byte")]
    msgs = {f.gate: f.message for f in failures}
    assert msgs["min_image_accuracy"] == "gate min_image_accuracy failed for images: " \
                                         "accuracy 0.40 < 0.50"
    assert len(evaluate_gates(figures, gates)) == 9


@pytest.mark.unit
def test_close_values_get_enough_decimals() -> None:
    (failure,) = check_gates(_figures("text", 0.2004, 0.0), GatesConfig(max_quarantine_rate=0.2))
    assert failure.message.endswith("quarantine rate 0.2004 > 0.2000")
