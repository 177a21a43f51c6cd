"""Fraud task: features, hashing, histogram AUCs; learning under Ray Train on 1 and 2 workers."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import PipelineConfig, TransactionTaskConfig, config_from_dict
from pipeline.jsonutil import json_clean
from pipeline.storage import Location, RunPaths
from pipeline.train.data import numpy_friendly, publish_split_table
from pipeline.train.tasks import get_task
from pipeline.train.tasks.transactions import (
    HIST_BINS,
    FraudTask,
    hash_buckets,
    numeric_features,
    pos_weight_for,
    pr_auc_from_histograms,
    roc_auc_from_histograms,
    score_histograms,
    synthetic_transactions,
)


def _exact_roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _exact_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].sum() / hits.sum())


def _batch(n: int = 64, seed: int = 0) -> dict[str, Any]:
    table = numpy_friendly(synthetic_transactions(n, seed))
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in FraudTask.columns}


@pytest.mark.unit
def test_hashing_is_stable_and_handles_nulls() -> None:
    values = np.array(["5411", None, "7995", "5411"], dtype=object)
    codes = hash_buckets(values, "mcc", 512)
    assert codes[0] == codes[3] == zlib.crc32(b"mcc=5411") % 512
    assert codes[1] == zlib.crc32(b"mcc=") % 512
    # A value's bucket does not depend on what else is in the batch.
    assert hash_buckets(np.array(["7995"], dtype=object), "mcc", 512)[0] == codes[2]
    # Fields are salted: the same string hashes differently per field.
    assert hash_buckets(np.array(["US"]), "country", 256)[0] == zlib.crc32(b"country=US") % 256


@pytest.mark.unit
def test_time_features_are_utc_hour_and_weekday() -> None:
    ts = np.array(["2026-01-05T06:00:00", "2026-01-11T18:00:00"], dtype="datetime64[us]")
    batch = {"amount": np.array([0.0, math.e - 1]), "ts": ts, "velocity_1h": np.array([0, 0]),
             "velocity_24h": np.array([0, 0])}
    f = numeric_features(batch)
    assert f.shape == (2, 12)
    np.testing.assert_allclose(f[:, 0], [0.0, 0.2], atol=1e-6)  # log1p(amount) / 5
    np.testing.assert_allclose(f[0, 1:3], [1.0, 0.0], atol=1e-6)  # 06:00 -> sin 1, cos 0
    np.testing.assert_allclose(f[1, 1:3], [-1.0, 0.0], atol=1e-6)  # 18:00
    assert f[0, 3] == 1.0 and f[1, 9] == 1.0  # Monday, Sunday one-hot


@pytest.mark.unit
def test_tensors_loss_and_sums() -> None:
    task = FraudTask(TransactionTaskConfig(hidden=16), pos_weight=4.0)
    x = task.to_tensors(_batch(), train=True)
    assert x["numeric"].shape == (64, 12) and x["categories"].shape == (64, 3)
    assert x["categories"].dtype == torch.int64 and x["target"].dtype == torch.float32
    torch.manual_seed(0)
    model = task.build_model()
    loss, sums = task.loss(model, x)
    assert loss.ndim == 0 and set(sums) == {"loss_sum", "count", "positives"}
    model.eval()
    _, sums = task.loss(model, x)
    assert len(sums) == 3 + 2 * HIST_BINS
    out = task.summarize({k: float(v) for k, v in sums.items()})
    assert set(out) == {"loss", "fraud_rate", "roc_auc", "pr_auc"}
    assert out["loss"] == pytest.approx(float(sums["loss_sum"]) / 64)
    assert pos_weight_for(0.2) == pytest.approx(4.0) and pos_weight_for(0.0) == 1.0


@pytest.mark.unit
def test_histogram_aucs_match_exact_ones() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.1
    scores = 1.0 / (1.0 + np.exp(-(rng.normal(size=4000) + 1.5 * labels - 1.0)))
    h = score_histograms(torch.from_numpy(scores), torch.from_numpy(labels.astype(np.float32)))
    pos = np.array([float(h[f"hist_pos_{i}"]) for i in range(HIST_BINS)])
    neg = np.array([float(h[f"hist_neg_{i}"]) for i in range(HIST_BINS)])
    assert pos.sum() == labels.sum() and neg.sum() == (~labels).sum()
    assert roc_auc_from_histograms(pos, neg) == pytest.approx(
        _exact_roc_auc(scores, labels), abs=2e-3)
    assert pr_auc_from_histograms(pos, neg) == pytest.approx(
        _exact_average_precision(scores, labels), abs=5e-3)
    # Sums of per-worker histograms give the same figures as one histogram of everything.
    assert roc_auc_from_histograms(pos * 2, neg * 2) == pytest.approx(
        roc_auc_from_histograms(pos, neg))


@pytest.mark.unit
def test_registry_builds_the_fraud_task() -> None:
    task = get_task("transactions", PipelineConfig())
    assert isinstance(task, FraudTask) and task.name == "transactions"


def _cfg(root: Path, workers: int, batch: int) -> PipelineConfig:
    return config_from_dict({
        "ray": {"num_cpus": 2}, "storage": {"root": f"file://{root}"},
        "train": {"epochs": 3, "seed": 0, "warmup_steps": 5, "checkpoint_every_steps": 1000,
                  "log_every_steps": 40, "scaling": {"num_workers": workers},
                  "transactions": {"batch_size": batch, "hidden": 32, "lr": 5e-3}}})


@pytest.fixture(scope="module")
def stage_table() -> Any:
    return synthetic_transactions(3000, seed=1, fraud_rate=0.1)


def _train(tmp: Path, table: Any, workers: int, batch: int) -> Any:
    from pipeline.train import train_task

    run = RunPaths(Location(f"file://{tmp}"), f"fraud-{workers}w")
    stage = run.stage("dedup/transactions")
    publish_split_table(stage, table)
    return train_task(_cfg(tmp, workers, batch), "transactions", stage, run)


@pytest.mark.integration
def test_fraud_learns_on_one_and_two_workers(ray_local: Any, tmp_path: Path,
                                              stage_table: Any) -> None:
    one = _train(tmp_path, stage_table, workers=1, batch=64)
    first, last = one.history[0], one.history[-1]
    assert len(one.history) == 3
    assert last["train_loss"] < first["train_loss"]
    assert last["val_loss"] < first["val_loss"] + 1e-3
    assert last["val_roc_auc"] > 0.7, one.history
    assert 0.0 < last["val_pr_auc"] <= 1.0
    assert one.task_state["fraud_rate"] == pytest.approx(0.1, abs=0.03)
    # What the train stage publishes as result.json: strict JSON, the history intact.
    report = json.loads(json.dumps(json_clean(one.to_json()), allow_nan=False))
    assert [h["val_loss"] for h in report["history"]] == [h["val_loss"] for h in one.history]
    assert one.best_checkpoint is not None and one.best_val_loss == min(
        h["val_loss"] for h in one.history)

    # Two workers with half the per-worker batch: the same global batch and step count.
    two = _train(tmp_path, stage_table, workers=2, batch=32)
    assert two.final_metrics["step"] == pytest.approx(one.final_metrics["step"], abs=1)
    assert two.final_metrics["val_roc_auc"] > 0.7
    assert two.final_metrics["val_loss"] == pytest.approx(one.final_metrics["val_loss"],
                                                          rel=0.05)


@pytest.mark.unit
def test_unlabeled_rows_count_nowhere() -> None:
    """A null label is no label, not "not fraud": such rows add nothing to the loss, its
    gradient, the fraud rate or the validation histograms, on both input paths."""
    table = numpy_friendly(synthetic_transactions(64, seed=3, fraud_rate=0.3))
    flags = table.column("is_fraud").to_pylist()
    unlabeled = [i % 4 == 1 for i in range(len(flags))]
    with_nulls = table.set_column(
        table.schema.get_field_index("is_fraud"), "is_fraud",
        pa.array([None if u else f for f, u in zip(flags, unlabeled, strict=True)], pa.bool_()))
    labelled = with_nulls.filter(pa.array([not u for u in unlabeled]))
    task = FraudTask(TransactionTaskConfig(hidden=16), pos_weight=2.0)
    torch.manual_seed(0)
    model = task.build_model()

    model.eval()  # no dropout, so both tables see the same function; eval adds histograms

    def run(t: pa.Table, preprocessed: bool) -> tuple[torch.Tensor, Any, Any]:
        model.zero_grad()
        batch = (task.preprocess(t).to_pydict() if preprocessed
                 else {c: t.column(c).to_numpy(zero_copy_only=False) for c in task.columns})
        loss, sums = task.loss(model, task.to_tensors(batch, train=False))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return loss, {k: float(v) for k, v in sums.items()}, grads

    for preprocessed in (False, True):
        loss, sums, grads = run(with_nulls, preprocessed)
        ref_loss, ref_sums, ref_grads = run(labelled, preprocessed)
        assert torch.isfinite(grads).all() and grads.abs().sum() > 0
        assert float(loss.detach()) == pytest.approx(float(ref_loss.detach()), rel=1e-5)
        assert torch.allclose(grads, ref_grads, rtol=1e-4, atol=1e-7)
        assert sums["count"] == labelled.num_rows == 48
        assert sums == pytest.approx(ref_sums)  # positives and histograms too
    # The fraud rate (and with it pos_weight) is over the labelled rows only.
    state = task.prepare(lambda cols: with_nulls.select(list(cols)))
    positives = sum(1 for f, u in zip(flags, unlabeled, strict=True) if f and not u)
    assert state["fraud_rate"] == pytest.approx(positives / 48)
