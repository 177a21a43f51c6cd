"""Evaluation metrics in plain numpy, from per-row predictions (pipeline.evaluate.inference).

- language model: `lm_metrics` from per-document byte counts and NLL sums in bits, so
  corpus figures are exact sums (never means of means);
- classification: `confusion_matrix` (rows = true class, columns = predicted),
  `classification_metrics` (accuracy, per-class precision/recall/F1/support, macro-F1);
- binary scores (fraud): exact `roc_auc` and `average_precision` (PR-AUC), sort-based, with
  tied scores handled as one threshold (ties get half credit in ROC-AUC, exactly the
  Mann-Whitney U statistic); `roc_curve` / `pr_curve` points; `best_f1_threshold` (chosen on
  validation) and `threshold_metrics` (applied to test); `downsample` for plots.

Undefined figures (no positives, an empty split) are NaN; callers decide how to show them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LN2 = math.log(2.0)


def lm_metrics(n_bytes: Any, nll_bits: Any, eos_nll_bits: Any) -> dict[str, float]:
    """Corpus LM figures from per-document sums.

    `n_bytes[i]`: scored UTF-8 bytes of document i; `nll_bits[i]`: their summed NLL in bits;
    `eos_nll_bits[i]`: the NLL in bits of its end-of-document token. `loss` is nats per
    token over bytes and EOS (as in training), `perplexity` = exp(loss), `bits_per_byte`
    leaves EOS out (comparable across tokenizers)."""
    b = np.asarray(n_bytes, dtype=np.float64)
    bits = np.asarray(nll_bits, dtype=np.float64)
    eos = np.asarray(eos_nll_bits, dtype=np.float64)
    docs, total_bytes = float(len(b)), float(b.sum())
    tokens = total_bytes + docs  # every document also scores its EOS
    loss = (bits.sum() + eos.sum()) * LN2 / tokens if tokens else math.nan
    return {"loss": float(loss),
            "perplexity": math.exp(min(loss, 700.0)) if math.isfinite(loss) else math.nan,
            "bits_per_byte": float(bits.sum() / total_bytes) if total_bytes else math.nan,
            "documents": docs, "bytes": total_bytes}


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] int64 counts: rows = true class, columns = predicted class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape} entries, y_pred {p.shape}")
    if t.size and (min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= n_classes):
        raise ValueError(f"class indices must be in [0, {n_classes})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes).astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class ClassificationReport:
    """Figures of a multi-class classifier on one split."""

    labels: tuple[str, ...]
    confusion: np.ndarray  # rows true, columns predicted
    precision: np.ndarray  # per class; NaN for a class never predicted
    recall: np.ndarray  # per class; NaN for a class absent from the split
    f1: np.ndarray  # per class; 0 when precision + recall == 0, NaN when both undefined
    support: np.ndarray  # true rows per class
    accuracy: float
    macro_f1: float  # mean F1 over the classes present in the split (support > 0)

    def per_class(self) -> list[dict[str, Any]]:
        """One dict per class: label, precision, recall, f1, support."""
        return [{"label": lab, "precision": float(self.precision[i]),
                 "recall": float(self.recall[i]), "f1": float(self.f1[i]),
                 "support": int(self.support[i])} for i, lab in enumerate(self.labels)]


def classification_metrics(y_true: Any, y_pred: Any, labels: Sequence[str]
                           ) -> ClassificationReport:
    """Accuracy, per-class precision/recall/F1 and macro-F1 from class indices."""
    k = len(labels)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0).astype(np.float64), cm.sum(axis=1).astype(np.float64)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    # A class that is present but never predicted has precision NaN and recall 0: its F1 is
    # 0 (it was missed), so treat the undefined precision as 0 for F1.
    p0, r0 = np.nan_to_num(precision), np.nan_to_num(recall)
    f1 = _ratio(2 * p0 * r0, p0 + r0)
    f1 = np.where(np.isnan(f1) & ((support > 0) | (predicted > 0)), 0.0, f1)
    n = cm.sum()
    present = support > 0
    return ClassificationReport(
        labels=tuple(labels), confusion=cm, precision=precision, recall=recall, f1=f1,
        support=support.astype(np.int64), accuracy=float(tp.sum() / n) if n else math.nan,
        macro_f1=float(f1[present].mean()) if present.any() else math.nan)


# --- binary scores ----------------------------------------------------------------------

def _tie_groups(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct scores descending, cumulative TP, cumulative FP) at each threshold
    "score >= t", one entry per distinct score, so tied rows move together."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.shape} entries, labels {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.array([], int)
    tp = np.cumsum(y)[last].astype(np.float64)
    fp = (last + 1 - tp).astype(np.float64)
    return s[last], tp, fp


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf; one point per
    distinct score. NaN rates when a class is absent."""
    thr, tp, fp = _tie_groups(scores, labels)
    n_pos = tp[-1] if len(tp) else 0.0
    n_neg = fp[-1] if len(fp) else 0.0
    tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(len(tp) + 1, np.nan)
    fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(len(fp) + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, thr]


def roc_auc(scores: Any, labels: Any) -> float:
    """Exact ROC-AUC: trapezoids over tie groups, i.e. P(score_pos > score_neg) + half of
    P(tie). NaN without both classes."""
    fpr, tpr, _ = roc_curve(scores, labels)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def pr_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), one point per distinct score from the highest
    down (recall increasing). Empty arrays without positives."""
    thr, tp, fp = _tie_groups(scores, labels)
    n_pos = tp[-1] if len(tp) else 0.0
    if not n_pos:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return tp / (tp + fp), tp / n_pos, thr


def average_precision(scores: Any, labels: Any) -> float:
    """PR-AUC as average precision: sum over thresholds of (recall gain) x precision,
    with tied scores forming one step. NaN without positives."""
    precision, recall, _ = pr_curve(scores, labels)
    if not len(recall):
        return math.nan
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1(tp: np.ndarray, fp: np.ndarray, n_pos: float) -> np.ndarray:
    return _ratio(2 * tp, tp + fp + n_pos)  # 2TP / (2TP + FP + FN), FN = n_pos - TP


def best_f1_threshold(scores: Any, labels: Any) -> tuple[float, float]:
    """(threshold, F1) maximizing F1 of "score >= threshold"; ties between thresholds go
    to the highest one. (NaN, NaN) without positives."""
    thr, tp, fp = _tie_groups(scores, labels)
    n_pos = tp[-1] if len(tp) else 0.0
    if not n_pos:
        return math.nan, math.nan
    f1 = _f1(tp, fp, n_pos)
    best = int(np.nanargmax(f1))  # first = highest threshold among equal F1
    return float(thr[best]), float(f1[best])


def threshold_metrics(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and the confusion counts of "score >= threshold"."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pred = s >= threshold
    tp, fp = float(np.sum(pred & y)), float(np.sum(pred & ~y))
    fn, tn = float(np.sum(~pred & y)), float(np.sum(~pred & ~y))
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp,
            "fn": fn, "tn": tn}


def downsample(xs: Any, ys: Any, max_points: int = 200) -> tuple[list[float], list[float]]:
    """At most `max_points` points of a curve for plotting: evenly spaced by index, first
    and last always kept, NaN points dropped."""
    x, y = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) > max_points:
        idx = np.unique(np.linspace(0, len(x) - 1, max_points).round().astype(np.int64))
        x, y = x[idx], y[idx]
    return [float(v) for v in x], [float(v) for v in y]
