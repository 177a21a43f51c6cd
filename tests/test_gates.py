"""Gates on undefined figures: a configured gate whose figure is None or NaN fails, saying
why; a figure that is absent, or a gate that is off, still does not apply."""

from __future__ import annotations

import json
import math
from typing import Any

import pyarrow as pa
import pytest

from pipeline.config import GatesConfig
from pipeline.evaluate.figures import finite_or_none, fraud_figures, image_figures, text_figures
from pipeline.gates import (
    UNDEFINED_FALLBACK,
    UNDEFINED_KEY,
    QualityGateError,
    check_gates,
    enforce_gates,
    evaluate_gates,
)

pytestmark = pytest.mark.unit


def _fraud(metrics: dict[str, Any], why: dict[str, str] | None = None) -> dict[str, Any]:
    fig: dict[str, Any] = {"modality": "transactions", "metrics": metrics}
    if why is not None:
        fig[UNDEFINED_KEY] = why
    return fig


def _evaluate_like_the_stage(modality: str, raw: dict[str, float], details: dict[str, Any],
                             gates: GatesConfig) -> list[Any]:
    """What pipeline.evaluate.stage does with a figures function's output."""
    why = {f"metrics.{k}": v for k, v in details["undefined"].items()}
    return evaluate_gates({"modality": modality, "metrics": finite_or_none(raw),
                           UNDEFINED_KEY: why}, gates)


@pytest.mark.parametrize("value", [None, math.nan, math.inf, "n/a"])
def test_undefined_figure_fails_a_configured_gate(value: Any) -> None:
    results = evaluate_gates(_fraud({"pr_auc": value}), GatesConfig(min_fraud_pr_auc=0.5))
    (gate,) = [r for r in results if r.gate == "min_fraud_pr_auc"]
    assert not gate.passed and gate.value is None
    assert gate.message == (f"gate min_fraud_pr_auc failed for transactions: PR-AUC is "
                            f"undefined: {UNDEFINED_FALLBACK}; it cannot be shown >= 0.50")


def test_the_message_says_why() -> None:
    why = {"metrics.pr_auc": "the test split has no positive labels (no fraud)"}
    with pytest.raises(QualityGateError) as err:
        enforce_gates(_fraud({"pr_auc": None, "roc_auc": 0.9}, why),
                      GatesConfig(min_fraud_pr_auc=0.5, min_fraud_roc_auc=0.5))
    assert str(err.value) == ("gate min_fraud_pr_auc failed for transactions: PR-AUC is "
                              "undefined: the test split has no positive labels (no fraud); "
                              "it cannot be shown >= 0.50")
    (failure,) = err.value.failures
    assert failure.undefined == why["metrics.pr_auc"]
    assert json.loads(json.dumps(failure.to_dict()))["value"] is None  # JSON-ready


def test_absent_figures_and_gates_that_are_off_do_not_apply() -> None:
    gates = GatesConfig(min_fraud_pr_auc=None, min_fraud_roc_auc=0.5)
    # pr_auc is off, roc_auc and the data figures are absent: nothing applies.
    assert evaluate_gates(_fraud({"pr_auc": None}), gates) == []
    assert check_gates({"modality": "transactions"}, GatesConfig(min_fraud_pr_auc=0.5)) == []


def test_defined_figures_still_compare() -> None:
    results = evaluate_gates(_fraud({"pr_auc": 0.7, "roc_auc": 0.4}),
                             GatesConfig(min_fraud_pr_auc=0.5, min_fraud_roc_auc=0.5))
    assert {r.gate: r.passed for r in results} == {"min_fraud_pr_auc": True,
                                                    "min_fraud_roc_auc": False}


def test_fraud_split_without_positives_fails_the_pr_auc_gate() -> None:
    # Issue 13.5: a test split with no fraud used to pass `min_fraud_pr_auc: 0.5`.
    test = pa.table({"fraud_score": [0.1, 0.7, 0.3], "is_fraud": [False, False, False]})
    val = pa.table({"fraud_score": [0.2, 0.9], "is_fraud": [False, True]})
    raw, details = fraud_figures(test, val)
    assert math.isnan(raw["pr_auc"]) and math.isnan(raw["roc_auc"])
    results = _evaluate_like_the_stage("transactions", raw, details,
                                       GatesConfig(min_fraud_pr_auc=0.5, min_fraud_roc_auc=0.5))
    msgs = {r.gate: r.message for r in results if not r.passed}
    assert msgs == {
        "min_fraud_pr_auc": "gate min_fraud_pr_auc failed for transactions: PR-AUC is "
                            "undefined: the test split has no positive labels (no fraud); "
                            "it cannot be shown >= 0.50",
        "min_fraud_roc_auc": "gate min_fraud_roc_auc failed for transactions: ROC-AUC is "
                             "undefined: the test split has no positive labels (no fraud); "
                             "it cannot be shown >= 0.50"}


def test_fraud_split_without_negatives_names_them() -> None:
    test = pa.table({"fraud_score": [0.1, 0.7], "is_fraud": [True, True]})
    raw, details = fraud_figures(test, None)
    assert details["undefined"] == {"roc_auc": "the test split has no negative labels",
                                    "val_f1": "the val split has no positive labels (or no rows)"}
    assert math.isfinite(raw["pr_auc"])


def test_images_and_text_say_why_too() -> None:
    images = pa.table({"label": ["zebra"], "pred_label": ["cat"], "nll": [1.0]})
    raw, details = image_figures(images, ["cat", "dog"])
    assert raw["rows"] == 0.0
    results = _evaluate_like_the_stage("images", raw, details,
                                       GatesConfig(min_image_accuracy=0.5))
    (acc,) = [r for r in results if r.gate == "min_image_accuracy"]
    assert not acc.passed
    assert "the test split has no rows with a label the model was trained on" in acc.message
    text = pa.table({"n_bytes": pa.array([], pa.int64()), "nll_bits": pa.array([], pa.float64()),
                     "eos_nll_bits": pa.array([], pa.float64())})
    raw, details = text_figures(text)
    results = _evaluate_like_the_stage("text", raw, details,
                                       GatesConfig(max_text_bits_per_byte=2.0))
    (bpb,) = [r for r in results if r.gate == "max_text_bits_per_byte"]
    assert not bpb.passed and "the test split has no text" in bpb.message
