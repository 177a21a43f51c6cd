"""The fraud task adapts to the declared schema: default inputs unchanged, declared numeric
features standardized with train-split statistics, categorical ones hashed, missing roles
and values handled, and 0.2% positives still learned (class weighting, PR-AUC)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import config_from_dict
from pipeline.config_transactions import TransactionSchemaConfig
from pipeline.evaluate import metrics as M
from pipeline.train.tasks.transactions import (
    BUCKETS,
    N_NUMERIC,
    FraudFeatures,
    FraudTask,
    numeric_features,
)

pytestmark = pytest.mark.unit


def _schema(**kw: object) -> TransactionSchemaConfig:
    cfg = config_from_dict({"inputs": {"transactions": {"schema": kw}}})
    return cfg.inputs.transactions.table_schema


def test_default_schema_keeps_the_original_inputs() -> None:
    task = FraudTask.from_config(config_from_dict({}))
    assert task.features == FraudFeatures()
    assert task.features.n_numeric == N_NUMERIC
    assert task.features.categorical == tuple(BUCKETS.items())
    assert task.columns == ("amount", "ts", "mcc", "country", "currency", "velocity_1h",
                            "velocity_24h", "is_fraud")


def test_declared_features_only_and_missing_roles() -> None:
    schema = _schema(format="csv", amount="Amount", label="Class",
                     features={"numeric": ["V1", "V2"], "categorical": ["shop.kind"]})
    f = FraudFeatures.of(schema)
    assert (f.amount, f.time, f.velocity) == (True, False, False)
    assert f.numeric == ("V1", "V2") and f.categorical == (("shop_kind", 1024),)
    assert f.columns() == ("amount", "shop_kind", "V1", "V2", "is_fraud")
    task = FraudTask(config_from_dict({}).train.transactions, features=f)
    table = pa.table({"amount": [10.0, None, 30.0], "shop_kind": ["a", None, "b"],
                      "V1": [1.0, 3.0, None], "V2": [0.0, 0.0, 0.0],
                      "is_fraud": [True, False, False]})
    state = task.prepare(lambda cols: table.select(list(cols)))
    assert state["feature_mean"] == [2.0, 0.0] and state["feature_std"] == [1.0, 1.0]
    out = task.to_tensors(task.preprocess(table).to_pydict(), train=True)
    assert out["numeric"].shape == (3, 3) and out["categories"].shape == (3, 1)
    # Standardized with the train statistics; a missing value is the mean (0).
    assert out["numeric"][:, 1].tolist() == [-1.0, 1.0, 0.0]
    assert out["numeric"][1, 0].item() == 0.0  # missing amount
    model = task.build_model()
    assert model(out["numeric"], out["categories"]).shape == (3,)
    # Evaluation rebuilds the task and takes the statistics back.
    other = FraudTask(config_from_dict({}).train.transactions, features=f)
    other.restore(state)
    assert (other.mean, other.std) == (task.mean, task.std)


def test_missing_timestamps_give_zero_time_features() -> None:
    ts = np.array(["2026-01-05T10:00:00", "NaT"], dtype="datetime64[us]")
    out = numeric_features({"amount": np.array([1.0, 2.0]), "ts": ts,
                            "velocity_1h": np.zeros(2), "velocity_24h": np.zeros(2)})
    assert out[0, 3:10].sum() == 1.0 and out[1, 1:10].tolist() == [0.0] * 9


def test_rare_positives_still_train() -> None:
    """0.2% positives: class weighting gives PR-AUC far above the base rate."""
    rng = np.random.default_rng(0)
    n = 8_000
    x = rng.normal(size=(n, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 3.1)  # about 0.2%
    assert 0.001 < y.mean() < 0.004
    f = FraudFeatures(amount=False, time=False, velocity=False, categorical=(),
                      numeric=("a", "b", "c", "d"))
    task = FraudTask(config_from_dict({}).train.transactions, features=f)
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "d": x[:, 3], "is_fraud": y})
    train, test = table.slice(0, 6_000), table.slice(6_000)
    state = task.prepare(lambda cols: train.select(list(cols)))
    assert state["pos_weight"] > 100
    torch.manual_seed(0)
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = task.to_tensors(task.preprocess(train).to_pydict(), train=True)
    for _ in range(80):
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    t = task.to_tensors(task.preprocess(test).to_pydict(), train=False)
    with torch.no_grad():
        scores = torch.sigmoid(model(t["numeric"], t["categories"])).numpy()
    truth = t["target"].numpy() > 0.5
    assert truth.sum() > 0
    assert M.average_precision(scores, truth) > 20 * truth.mean()


def test_batch_inference_requires_the_declared_features(tmp_path: object) -> None:
    import pyarrow.parquet as pq

    from pipeline.evaluate.predict import check_schema
    from pipeline.storage import Location

    cfg = config_from_dict({"inputs": {"transactions": {"schema": {
        "format": "csv", "amount": "Amount", "label": "Class",
        "features": {"numeric": ["V1"]}}}}})
    base = {c: [None] for c in ("txn_id", "amount", "ts", "mcc", "country", "currency",
                                "velocity_1h", "velocity_24h")}
    path = f"{tmp_path}/a.parquet"
    pq.write_table(pa.table(base), path)
    with pytest.raises(ValueError, match="missing column"):
        check_schema("transactions", [Location(path)], cfg)
    pq.write_table(pa.table({**base, "V1": [1.0]}), path)
    assert "V1" in check_schema("transactions", [Location(path)], cfg)
    assert "V1" not in check_schema("transactions", [Location(path)])
