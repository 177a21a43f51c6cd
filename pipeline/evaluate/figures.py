"""From prediction tables to evaluation figures, one function per modality.

Each modality's spec (`evaluation.figures`, pipeline.modalities) calls its function here
with the sorted prediction tables of the scored splits (`{"test": table}`, plus `"val"`
for the fraud threshold); each returns `(metrics, details)`:

- `metrics`: flat {name: float}, what the gates (pipeline.gates) and the manifest read.
  text: loss, perplexity, bits_per_byte, documents, bytes. images: loss, accuracy,
  macro_f1, `precision.<class>`, `recall.<class>`, `f1.<class>`, rows, unknown_label_rows.
  transactions: roc_auc, pr_auc, threshold, precision, recall, f1 (at the threshold on
  test), val_f1, rows, positives, fraud_rate (of the labelled rows), unlabeled_rows.
- `details`: JSON-ready structures for the report: the per-class table and confusion
  matrix, ROC/PR curve points (at most `curve_points` each), the threshold's origin, and
  `undefined`: {metric: why} for each metric that is NaN (no positives, an empty split),
  which a failing gate quotes (pipeline.gates).

The fraud decision threshold maximizes F1 on `val` and is then applied to `test`, so the
test figures at the threshold are not tuned on test. Without validation positives it falls
back to 0.5 and says so.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.evaluate import metrics as M

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5


def _col(table: pa.Table, name: str, dtype: Any = np.float64) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)


def text_figures(test: pa.Table) -> tuple[dict[str, float], dict[str, Any]]:
    """LM figures of the test split from per-document sums."""
    figures = M.lm_metrics(_col(test, "n_bytes"), _col(test, "nll_bits"),
                           _col(test, "eos_nll_bits"))
    empty = "the test split has no text (no bytes, no tokens)"
    return figures, {"undefined": undefined_reasons(figures, dict.fromkeys(figures, empty))}


def image_figures(test: pa.Table, labels: Sequence[str]
                  ) -> tuple[dict[str, float], dict[str, Any]]:
    """Accuracy, macro-F1, per-class P/R/F1 and the confusion matrix of the test split.

    Rows whose label is not in the trained vocabulary (a class absent from the train
    split) cannot enter the confusion matrix; they are counted as `unknown_label_rows`."""
    vocab = {lab: i for i, lab in enumerate(labels)}
    true = test.column("label").to_pylist()
    pred = test.column("pred_label").to_pylist()
    known = np.array([t in vocab for t in true], dtype=bool)
    if (~known).any():
        log.warning("images: %d test rows have labels outside the trained vocabulary %s",
                    int((~known).sum()), list(labels))
    y_true = np.array([vocab[t] for t, k in zip(true, known, strict=True) if k], np.int64)
    y_pred = np.array([vocab[p] for p, k in zip(pred, known, strict=True) if k], np.int64)
    report = M.classification_metrics(y_true, y_pred, labels)
    nll = _col(test, "nll")[known]
    figures: dict[str, float] = {
        "loss": float(nll.mean()) if len(nll) else math.nan,
        "accuracy": report.accuracy, "macro_f1": report.macro_f1,
        "rows": float(len(y_true)), "unknown_label_rows": float((~known).sum())}
    for row in report.per_class():
        for key in ("precision", "recall", "f1"):
            figures[f"{key}.{row['label']}"] = row[key]
    no_rows = "the test split has no rows with a label the model was trained on"
    why = dict.fromkeys(("loss", "accuracy", "macro_f1"), no_rows)
    for label in labels:
        why[f"precision.{label}"] = f"no test row is predicted as {label!r}"
        why[f"recall.{label}"] = f"no test row is labelled {label!r}"
        why[f"f1.{label}"] = f"no test row is labelled or predicted {label!r}"
    details = {"labels": list(labels), "per_class": report.per_class(),
               "confusion": report.confusion.tolist(),
               "undefined": undefined_reasons(figures, why)}
    return figures, details


def _labelled(table: pa.Table, split: str) -> tuple[pa.Table, int]:
    """The rows of `table` with a fraud label, and how many had none."""
    missing = table.column("is_fraud").null_count
    if not missing:
        return table, 0
    log.warning("transactions: %d of %d %s rows have no label; the %s figures leave them out",
                missing, table.num_rows, split, split)
    return table.filter(pc.is_valid(table.column("is_fraud"))), missing


def _curves(scores: np.ndarray, truth: np.ndarray, points: int) -> dict[str, Any]:
    fpr, tpr, _ = M.roc_curve(scores, truth)
    precision, recall, _ = M.pr_curve(scores, truth)
    roc_x, roc_y = M.downsample(fpr, tpr, points)
    pr_x, pr_y = M.downsample(recall, precision, points)
    return {"roc": {"fpr": roc_x, "tpr": roc_y}, "pr": {"recall": pr_x, "precision": pr_y}}


def fraud_figures(test: pa.Table, val: pa.Table | None, curve_points: int = 200
                  ) -> tuple[dict[str, float], dict[str, Any]]:
    """ROC-AUC, PR-AUC and precision/recall/F1 at the val-chosen threshold on test.

    Rows without a label (null `is_fraud`) are scored but have no truth: they are left out
    of every figure (not counted as "not fraud") and counted as `unlabeled_rows`."""
    test, unlabeled = _labelled(test, "test")
    if val is not None:
        val, _ = _labelled(val, "val")
    scores, truth = _col(test, "fraud_score"), _col(test, "is_fraud", bool)
    threshold, val_f1, source = math.nan, math.nan, "val max F1"
    if val is not None and val.num_rows:
        threshold, val_f1 = M.best_f1_threshold(_col(val, "fraud_score"),
                                                _col(val, "is_fraud", bool))
    if not math.isfinite(threshold):
        threshold, source = DEFAULT_THRESHOLD, "default (no positives in val)"
        log.warning("transactions: no fraud in the val split; decision threshold %.2f",
                    threshold)
    at = M.threshold_metrics(scores, truth, threshold)
    positives = float(truth.sum())
    figures = {"roc_auc": M.roc_auc(scores, truth), "pr_auc": M.average_precision(scores, truth),
               "threshold": threshold, "precision": at["precision"], "recall": at["recall"],
               "f1": at["f1"], "val_f1": val_f1, "rows": float(len(truth)),
               "positives": positives,
               "fraud_rate": positives / len(truth) if len(truth) else math.nan,
               "unlabeled_rows": float(unlabeled)}
    no_pos = "the test split has no positive labels (no fraud)"
    why = {"roc_auc": no_pos if not positives else "the test split has no negative labels",
           "pr_auc": no_pos, "recall": no_pos, "f1": no_pos,
           "precision": f"no test row scores at or above the threshold {threshold:g}",
           "val_f1": "the val split has no positive labels (or no rows)",
           "threshold": "the val split has no positive labels (or no rows)",
           "fraud_rate": "the test split has no labelled rows"}
    details = {"threshold_source": source,
               "at_threshold": {k: at[k] for k in ("tp", "fp", "fn", "tn")},
               "undefined": undefined_reasons(figures, why),
               **_curves(scores, truth, curve_points)}
    return figures, details


def undefined_reasons(metrics: Mapping[str, float], why: Mapping[str, str]) -> dict[str, str]:
    """{name: why} for the metrics that are not finite numbers (those `finite_or_none`
    turns into None); a metric with no sentence in `why` gets a generic one."""
    return {k: why.get(k, "the figure is not a finite number") for k, v in metrics.items()
            if not math.isfinite(float(v))}


def finite_or_none(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics for JSON and gates: NaN/inf (undefined, e.g. no positives) become None."""
    return {k: (float(v) if math.isfinite(float(v)) else None) for k, v in metrics.items()}
