"""Evaluation metrics against brute-force reference implementations."""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.evaluate import metrics as M
from pipeline.evaluate.figures import fraud_figures
from pipeline.evaluate.inference import document_windows
from pipeline.train.tasks.text import BOS_ID, EOS_ID, PAD_ID, encode, make_windows

pytestmark = pytest.mark.unit


def _brute_auc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y], s[~y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def _brute_ap(s: np.ndarray, y: np.ndarray) -> float:
    # Average precision over distinct thresholds, highest first: recall gain x precision.
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = int(np.sum(pred & y))
        recall = tp / y.sum()
        total += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return total


def _brute_best_f1(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    best = (-1.0, math.nan)
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, t)
    return best[1], best[0]


def _scores(seed: int, n: int = 120, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    s = rng.normal(0, 1, n) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many tied scores, across classes
    return s, y


@pytest.mark.parametrize("seed,ties", [(0, False), (1, True), (2, True), (3, False)])
def test_roc_auc_average_precision_and_threshold_match_brute_force(seed: int,
                                                                   ties: bool) -> None:
    s, y = _scores(seed, ties=ties)
    assert M.roc_auc(s, y) == pytest.approx(_brute_auc(s, y), abs=1e-12)
    assert M.average_precision(s, y) == pytest.approx(_brute_ap(s, y), abs=1e-12)
    threshold, f1 = M.best_f1_threshold(s, y)
    ref_t, ref_f1 = _brute_best_f1(s, y)
    assert (threshold, f1) == pytest.approx((ref_t, ref_f1))
    at = M.threshold_metrics(s, y, threshold)
    assert at["f1"] == pytest.approx(f1)
    assert at["tp"] + at["fp"] + at["fn"] + at["tn"] == len(s)


def test_curves_and_edge_cases() -> None:
    s, y = _scores(4, ties=True)
    fpr, tpr, thr = M.roc_curve(s, y)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert len(thr) == len(set(s.tolist())) + 1  # one point per distinct score + origin
    precision, recall, _ = M.pr_curve(s, y)
    assert recall[-1] == 1.0 and precision[-1] == pytest.approx(y.mean())
    xs, ys = M.downsample(np.linspace(0, 1, 1000), np.linspace(0, 2, 1000), 200)
    assert len(xs) == len(ys) <= 200 and (xs[0], xs[-1], ys[-1]) == (0.0, 1.0, 2.0)
    # Perfect separation, all ties, a single class.
    assert M.roc_auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert M.roc_auc([0.5, 0.5, 0.5, 0.5], [True, False, True, False]) == 0.5
    assert math.isnan(M.roc_auc([0.1, 0.2], [False, False]))
    assert math.isnan(M.average_precision([0.1, 0.2], [False, False]))
    with pytest.raises(ValueError, match="NaN"):
        M.roc_auc([0.1, math.nan], [True, False])


def test_fraud_threshold_is_chosen_on_val_and_applied_to_test() -> None:
    sv, yv = _scores(5)
    st, yt = _scores(6)
    val = pa.table({"fraud_score": sv, "is_fraud": yv})
    test = pa.table({"fraud_score": st, "is_fraud": yt})
    figures, details = fraud_figures(test, val, curve_points=50)
    ref_t, ref_f1 = _brute_best_f1(sv, yv)
    assert figures["threshold"] == pytest.approx(ref_t)
    assert figures["val_f1"] == pytest.approx(ref_f1)
    pred = st >= ref_t
    assert figures["precision"] == pytest.approx(np.sum(pred & yt) / pred.sum())
    assert figures["recall"] == pytest.approx(np.sum(pred & yt) / yt.sum())
    assert figures["roc_auc"] == pytest.approx(_brute_auc(st, yt))
    assert len(details["roc"]["fpr"]) <= 50 and details["threshold_source"] == "val max F1"
    no_pos = pa.table({"fraud_score": sv, "is_fraud": np.zeros(len(sv), bool)})
    figures, details = fraud_figures(test, no_pos)
    assert figures["threshold"] == 0.5 and details["threshold_source"].startswith("default")


def test_classification_metrics_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    labels = ["a", "b", "c", "d"]
    t = rng.integers(0, 3, 200)  # class "d" never occurs...
    p = np.where(rng.random(200) < 0.7, t, rng.integers(0, 4, 200))  # ...but is predicted
    r = M.classification_metrics(t, p, labels)
    cm = np.zeros((4, 4), int)
    for a, b in zip(t, p, strict=True):
        cm[a, b] += 1
    assert (r.confusion == cm).all()
    assert r.accuracy == pytest.approx(np.mean(t == p))
    for k in range(3):
        prec = np.sum((p == k) & (t == k)) / np.sum(p == k)
        rec = np.sum((p == k) & (t == k)) / np.sum(t == k)
        assert r.precision[k] == pytest.approx(prec) and r.recall[k] == pytest.approx(rec)
        assert r.f1[k] == pytest.approx(2 * prec * rec / (prec + rec))
    assert r.precision[3] == 0.0 and math.isnan(r.recall[3]) and r.f1[3] == 0.0
    assert r.macro_f1 == pytest.approx(np.mean(r.f1[:3]))  # over classes present
    assert [c["support"] for c in r.per_class()] == [int(np.sum(t == k)) for k in range(4)]


def test_lm_metrics_are_exact_sums() -> None:
    n = np.array([10, 0, 30])
    bits = np.array([20.0, 0.0, 75.0])
    eos = np.array([1.0, 2.0, 3.0])
    m = M.lm_metrics(n, bits, eos)
    assert m["bits_per_byte"] == pytest.approx(95.0 / 40)
    assert m["loss"] == pytest.approx((95.0 + 6.0) * math.log(2) / 43)
    assert m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    assert math.isnan(M.lm_metrics([], [], [])["loss"])


def test_document_windows_cover_each_target_once() -> None:
    texts = ["", "héllo", "x" * 23, "abcdefghij" * 3]
    seq_len = 8
    windows, doc, n = document_windows(pa.array(texts), seq_len)
    assert n.tolist() == [len(t.encode()) for t in texts]
    for i, text in enumerate(texts):
        stream = encode(text)
        mine = windows[doc == i]
        # Window k holds stream[k*seq_len : k*seq_len + seq_len + 1], PAD-filled.
        for k, w in enumerate(mine):
            part = stream[k * seq_len: k * seq_len + seq_len + 1]
            assert w.tolist() == part + [PAD_ID] * (seq_len + 1 - len(part))
        targets = mine[:, 1:].reshape(-1)
        assert targets[targets != PAD_ID].tolist() == stream[1:]  # every target once
    # A document that fits one window gives exactly the training/validation window.
    short = document_windows(pa.array(["hello"]), seq_len)[0]
    assert (short == make_windows(["hello"], seq_len, train=False)).all()
    assert short[0, 0] == BOS_ID and EOS_ID in short[0]


def test_cli_commands_parse() -> None:
    from pipeline.evaluate.cli import add_commands

    parser = argparse.ArgumentParser(prog="pipeline")
    add_commands(parser.add_subparsers(dest="command"))
    args: Any = parser.parse_args(["predict", "--modality", "images", "--input",
                                   "in.parquet", "--output", "out", "--set",
                                   "evaluate.actors=2"])
    assert (args.modality, args.input, args.output, args.checkpoint) == (
        "images", "in.parquet", "out", None)
    # --task is the older spelling of --modality.
    args = parser.parse_args(["evaluate", "--modality", "text", "--task", "images"])
    assert args.modality == ["text", "images"] and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--modality", "audio", "--input", "a", "--output", "b"])


def test_cli_offers_the_registered_modalities_with_a_model() -> None:
    """A modality registered with an evaluation spec is offered without a code change."""
    from dataclasses import replace

    from pipeline import modalities
    from pipeline.evaluate.cli import add_commands, evaluated_modalities

    audio = replace(modalities.get("text"), name="audio")
    with modalities.registered(audio):
        assert evaluated_modalities()[-1] == "audio"
        parser = argparse.ArgumentParser(prog="pipeline")
        add_commands(parser.add_subparsers(dest="command"))
        args: Any = parser.parse_args(["evaluate", "--modality", "audio"])
        assert args.modality == ["audio"]
    assert "audio" not in evaluated_modalities()


def test_json_clean_gives_strict_json() -> None:
    import datetime
    import decimal
    import json

    from pipeline.jsonutil import json_clean

    value = {"f": np.float32(0.5), "i": np.int64(3), "nan": float("nan"),
             "inf": np.float64(np.inf), "d": decimal.Decimal("1.25"), 2: (1, None),
             "t": datetime.date(2024, 1, 2), "a": np.array([1.0, np.nan]), "b": np.bool_(True)}
    assert json.loads(json.dumps(json_clean(value), allow_nan=False)) == {
        "f": 0.5, "i": 3, "nan": None, "inf": None, "d": 1.25, "2": [1, None],
        "t": "2024-01-02", "a": [1.0, None], "b": True}


@pytest.mark.unit
def test_fraud_figures_leave_unlabeled_rows_out() -> None:
    """Rows with a null label are counted, not scored as "not fraud": every figure equals
    that of the labelled rows alone."""
    sv, yv = _scores(7)
    st, yt = _scores(8)

    def with_gaps(s: np.ndarray, y: np.ndarray) -> pa.Table:
        # every third row loses its label; its high score would be a false positive
        labels = [None if i % 3 == 0 else bool(v) for i, v in enumerate(y)]
        return pa.table({"fraud_score": s + (np.arange(len(s)) % 3 == 0) * 2.0,
                         "is_fraud": pa.array(labels, pa.bool_())})

    keep = np.arange(len(st)) % 3 != 0
    keep_v = np.arange(len(sv)) % 3 != 0
    got, got_details = fraud_figures(with_gaps(st, yt), with_gaps(sv, yv), curve_points=50)
    ref, ref_details = fraud_figures(pa.table({"fraud_score": st[keep], "is_fraud": yt[keep]}),
                                     pa.table({"fraud_score": sv[keep_v],
                                               "is_fraud": yv[keep_v]}), curve_points=50)
    assert got.pop("unlabeled_rows") == 40 and ref.pop("unlabeled_rows") == 0
    assert got == pytest.approx(ref) and got["rows"] == 80
    assert got_details["roc"] == ref_details["roc"]
