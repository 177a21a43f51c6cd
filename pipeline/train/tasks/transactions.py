"""Fraud task: an MLP scoring card transactions, trained with class-weighted BCE.

Features, all computed per batch with numpy (no per-row Python):

- `log1p(amount)` (the amount in its own currency; the currency embedding gives the scale);
- hour of day from `ts` (UTC) as sin/cos on the 24 h circle, and the day of week one-hot;
- `log1p(velocity_1h)`, `log1p(velocity_24h)`: earlier transactions on the same account;
- `mcc`, `country`, `currency` as learned embeddings over hashed buckets (the hashing
  trick): bucket = crc32("field=value") mod buckets, computed once per distinct value of
  the batch (`np.unique`) and broadcast back, so no vocabulary has to be built or stored
  and unseen categories still get a (shared) bucket.

The loss is BCE with `pos_weight` = negatives / positives of the train split, so that the
rare fraud class weighs as much as the rest; `prepare` (an optional task hook the training
driver calls once, before training) measures it, and it is part of the config digest.

Metric sums (all-reduced over workers by the loop): `loss_sum` (summed weighted BCE),
`count`, `positives`, and in evaluation mode (`model.eval()`) two fixed-bin histograms of
the predicted fraud probability, `hist_pos_{i}` / `hist_neg_{i}` for i < HIST_BINS over
[0, 1]. ROC-AUC and PR-AUC are computed from the summed histograms: this treats scores in
one bin as tied (the trapezoid rule gives ties half credit), so the error is bounded by the
pairs that fall into the same bin — with 200 bins it is below 1e-3 for the scores seen
here. Training-mode batches skip the histograms, which the loop only needs for validation.

`preprocess` (an optional task hook) computes the same features on Arrow columns inside
the Ray Data read, once per row; `to_tensors` then only stacks columns. It still accepts
raw rows too (evaluation, tests), with identical results.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import PipelineConfig, TransactionTaskConfig
from pipeline.config_transactions import TransactionSchemaConfig

HIST_BINS = 200
#: hashed buckets per categorical role column
BUCKETS: Mapping[str, int] = {"mcc": 512, "country": 256, "currency": 64}
#: hashed buckets of each declared categorical feature
FEATURE_BUCKETS = 1024
EMBED_DIM = 8
N_NUMERIC = 1 + 2 + 7 + 2  # amount, hour sin/cos, day of week one-hot, two velocities
#: what `preprocess` produces for the default schema (and `to_tensors` then reads)
FEATURE_COLUMNS: tuple[str, ...] = (*(f"f{i}" for i in range(N_NUMERIC)),
                                    *(f"bucket_{f}" for f in BUCKETS), "target")
_US_PER_DAY = 86_400_000_000
_US_PER_HOUR = 3_600_000_000
_NAT = np.iinfo(np.int64).min


@dataclass(frozen=True)
class FraudFeatures:
    """Which inputs the model has, from the declared table schema: the role-derived
    features of the roles that are mapped, then the declared features. The default schema
    gives exactly amount, time, velocities and the mcc/country/currency embeddings."""

    amount: bool = True
    time: bool = True
    velocity: bool = True
    #: (curated column, hashed buckets) of every embedded categorical column
    categorical: tuple[tuple[str, int], ...] = tuple(BUCKETS.items())
    #: curated columns of the declared numeric features (standardized)
    numeric: tuple[str, ...] = ()

    @classmethod
    def of(cls, schema: TransactionSchemaConfig) -> FraudFeatures:
        mapped = set(schema.mapped)
        has = {"mcc": "mcc" in mapped, "country": "country" in mapped,
               "currency": schema.has_currency}
        names = list(schema.feature_columns())
        n_numeric = len(schema.features.numeric)
        return cls(amount="amount" in mapped, time="timestamp" in mapped,
                   velocity={"account", "timestamp"} <= mapped,
                   categorical=(*((c, n) for c, n in BUCKETS.items() if has[c]),
                                *((c, FEATURE_BUCKETS) for c in names[n_numeric:])),
                   numeric=tuple(names[:n_numeric]))

    @property
    def n_base(self) -> int:
        """Numeric inputs made from roles (before the declared numeric features)."""
        return (1 if self.amount else 0) + (9 if self.time else 0) + (
            2 if self.velocity else 0)

    @property
    def n_numeric(self) -> int:
        return self.n_base + len(self.numeric)

    def columns(self) -> tuple[str, ...]:
        """The curated columns the task reads (the label last)."""
        roles = [c for c, _ in self.categorical if c in BUCKETS]
        declared = [c for c, _ in self.categorical if c not in BUCKETS]
        cols = [*(["amount"] if self.amount else []), *(["ts"] if self.time else []),
                *roles, *(["velocity_1h", "velocity_24h"] if self.velocity else []),
                *declared, *self.numeric, "is_fraud"]
        return tuple(dict.fromkeys(cols))


def hash_buckets(values: Any, field: str, buckets: int) -> np.ndarray:
    """Stable bucket index [B] int64 of each value: crc32 of "field=value" mod `buckets`.

    crc32 runs once per distinct value of the batch; nulls hash as the empty string."""
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.where(arr == None, "", arr)  # noqa: E711 (elementwise on object arrays)
    uniques, inverse = np.unique(arr.astype(str), return_inverse=True)
    codes = np.fromiter((zlib.crc32(f"{field}={u}".encode()) % buckets for u in uniques),
                        dtype=np.int64, count=len(uniques))
    return codes[inverse.reshape(-1)]


def hash_buckets_arrow(values: pa.Array | pa.ChunkedArray, field: str, buckets: int
                       ) -> np.ndarray:
    """`hash_buckets` of an Arrow string column, without making Python strings per row:
    dictionary-encode, hash the dictionary, take by the indices."""
    encoded = pc.dictionary_encode(pc.fill_null(values.cast(pa.string()), ""))
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks() if encoded.num_chunks != 1 else encoded.chunk(0)
    codes = np.fromiter((zlib.crc32(f"{field}={u}".encode()) % buckets
                         for u in encoded.dictionary.to_pylist()), dtype=np.int64,
                        count=len(encoded.dictionary))
    return codes[encoded.indices.to_numpy(zero_copy_only=False)]


def _micros_utc(ts: Any) -> np.ndarray:
    """Microseconds since the Unix epoch (UTC) of a timestamp column [B] int64 (NaT and
    nulls become the int64 minimum)."""
    arr = np.asarray(ts)
    if np.issubdtype(arr.dtype, np.datetime64):
        return arr.astype("datetime64[us]").astype(np.int64)
    if arr.dtype == object:  # pandas/py datetimes, e.g. tz-aware ones
        return np.asarray(arr, dtype="datetime64[us]").astype(np.int64)
    return arr.astype(np.int64)


def _floats(values: Any) -> np.ndarray:
    """A column as float64, nulls as NaN."""
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.where(arr == None, np.nan, arr)  # noqa: E711 (elementwise)
    return arr.astype(np.float64)


def numeric_features(batch: Mapping[str, Any], features: FraudFeatures | None = None,
                     mean: Sequence[float] = (), std: Sequence[float] = ()) -> np.ndarray:
    """[B, n_numeric] float32: log amount, hour sin/cos, day-of-week one-hot, velocities
    (those the schema has), then the declared numeric features standardized with `mean`
    and `std` (train-split statistics). Missing values are 0 (the mean, once
    standardized)."""
    features = features or FraudFeatures()
    n = len(next(iter(batch.values())))
    out = np.zeros((n, features.n_numeric), dtype=np.float32)
    k = 0
    if features.amount:
        amount = _floats(batch["amount"])
        # Fixed scales keep every input near unit range without statistics to store.
        out[:, 0] = np.nan_to_num(np.log1p(np.maximum(amount, 0.0)) / 5.0)
        k = 1
    if features.time:
        us = _micros_utc(batch["ts"])
        known = us != _NAT
        hour = (us % _US_PER_DAY) / _US_PER_HOUR
        angle = hour * (2.0 * math.pi / 24.0)
        # 1970-01-01 was a Thursday: Monday = 0 after the +3 shift.
        dow = (us // _US_PER_DAY + 3) % 7
        out[:, k] = np.where(known, np.sin(angle), 0.0)
        out[:, k + 1] = np.where(known, np.cos(angle), 0.0)
        rows = np.flatnonzero(known)
        out[rows, k + 2 + dow[rows]] = 1.0
        k += 9
    if features.velocity:
        out[:, k] = np.nan_to_num(np.log1p(_floats(batch["velocity_1h"])) / 2.0)
        out[:, k + 1] = np.nan_to_num(np.log1p(_floats(batch["velocity_24h"])) / 3.0)
        k += 2
    for i, column in enumerate(features.numeric):
        m = mean[i] if i < len(mean) else 0.0
        s = std[i] if i < len(std) else 1.0
        out[:, k + i] = np.nan_to_num((_floats(batch[column]) - m) / (s or 1.0))
    return out


class FraudMLP(nn.Module):
    """Hashed-category embeddings + numeric features -> 2 hidden layers -> one logit."""

    def __init__(self, hidden: int, dropout: float = 0.1,
                 features: FraudFeatures | None = None) -> None:
        super().__init__()
        features = features or FraudFeatures()
        self.embeddings = nn.ModuleDict(
            {name: nn.Embedding(n, EMBED_DIM) for name, n in features.categorical})
        width = features.n_numeric + EMBED_DIM * len(features.categorical)
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, numeric: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        """Logits [B] from numeric [B, n_numeric] and bucket ids [B, categorical]."""
        parts = [numeric] + [emb(categories[:, i])
                             for i, emb in enumerate(self.embeddings.values())]
        return self.net(torch.cat(parts, dim=1)).squeeze(1)


class FraudTask:
    """Fraud classifier on the curated transactions (implements pipeline.train.task.Task).

    Its inputs follow the declared table schema (`FraudFeatures.of`); the declared numeric
    features are standardized with the train split's mean and standard deviation, measured
    once by `prepare` and kept in the task state (so evaluation scores with the same)."""

    name: str = "transactions"
    #: the default schema's columns (an instance has those of its own schema)
    columns: tuple[str, ...] = FraudFeatures().columns()

    def __init__(self, cfg: TransactionTaskConfig, pos_weight: float = 1.0,
                 dropout: float = 0.1, features: FraudFeatures | None = None) -> None:
        self.cfg = cfg
        self.pos_weight = float(pos_weight)
        self.dropout = dropout
        self.features = features or FraudFeatures()
        self.columns: tuple[str, ...] = self.features.columns()
        self.mean: list[float] = [0.0] * len(self.features.numeric)
        self.std: list[float] = [1.0] * len(self.features.numeric)

    @classmethod
    def from_config(cls, cfg: PipelineConfig, labels: Sequence[str] | None = None
                    ) -> FraudTask:
        """Registry factory; `labels` is not used (the target is the `is_fraud` flag)."""
        return cls(cfg.train.transactions,
                   features=FraudFeatures.of(cfg.inputs.transactions.table_schema))

    def prepare(self, read_train: Callable[[Sequence[str]], pa.Table]) -> dict[str, Any]:
        """Driver-side hook, called once before training with a reader of train-split
        columns: sets `pos_weight` from the fraud rate and the standardization of the
        declared numeric features; returns the figures that belong in the config digest."""
        table = read_train(["is_fraud", *self.features.numeric])
        flags = table.column("is_fraud")
        # Unlabeled rows (a null label) are kept by ingest but carry no target: they are
        # left out of the fraud rate here and out of the loss (see `loss`).
        labelled = len(flags) - flags.null_count
        positives = int(pc.sum(flags.cast(pa.int64())).as_py() or 0)
        rate = positives / labelled if labelled else 0.0
        self.pos_weight = pos_weight_for(rate)
        state: dict[str, Any] = {"fraud_rate": rate, "pos_weight": self.pos_weight,
                                 "dropout": self.dropout}
        if self.features.numeric:
            for i, column in enumerate(self.features.numeric):
                values = _floats(table.column(column).to_numpy(zero_copy_only=False))
                finite = values[np.isfinite(values)]
                self.mean[i] = float(finite.mean()) if len(finite) else 0.0
                spread = float(finite.std()) if len(finite) else 0.0
                self.std[i] = spread if spread > 0 else 1.0
            state.update({"feature_mean": list(self.mean), "feature_std": list(self.std)})
        return state

    def restore(self, task_state: Mapping[str, Any]) -> None:
        """Take back the train-split statistics `prepare` measured (evaluation)."""
        if "feature_mean" in task_state:
            self.mean = [float(v) for v in task_state["feature_mean"]]
            self.std = [float(v) for v in task_state["feature_std"]]

    def build_model(self) -> nn.Module:
        return FraudMLP(self.cfg.hidden, self.dropout, self.features)

    def _categories(self, column: Callable[[str], Any], arrow: bool) -> np.ndarray:
        cats = [hash_buckets_arrow(column(c), c, n) if arrow else hash_buckets(column(c), c, n)
                for c, n in self.features.categorical]
        n_rows = len(column(self.columns[0]))
        return np.stack(cats, axis=1) if cats else np.zeros((n_rows, 0), dtype=np.int64)

    def preprocess(self, table: pa.Table) -> pa.Table:
        """Optional hook run by Ray Data (`map_batches`, in parallel, when the driver reads
        the splits): the features of `to_tensors`, computed on Arrow columns once per row
        instead of once per row and epoch. Output: f<i>, bucket_<column>, target."""
        raw = {c: table.column(c).to_numpy(zero_copy_only=False)
               for c in self.columns if c not in dict(self.features.categorical)
               and c != "is_fraud"}
        raw = raw or {"_rows": np.zeros(table.num_rows)}
        numeric = numeric_features(raw, self.features, self.mean, self.std)
        cols: dict[str, Any] = {f"f{i}": numeric[:, i] for i in range(numeric.shape[1])}
        cats = self._categories(table.column, arrow=True)
        for i, (c, _) in enumerate(self.features.categorical):
            cols[f"bucket_{c}"] = cats[:, i]
        # NaN marks an unlabeled row (null label): no target, left out of the loss
        target = table.column("is_fraud").cast(pa.float32())
        cols["target"] = target.to_numpy(zero_copy_only=False).astype(np.float32)
        return pa.table(cols)

    def to_tensors(self, batch: Mapping[str, Any], train: bool,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """{"numeric": [B, n_numeric] float32, "categories": [B, n_categorical] int64,
        "target": [B] float32} from raw rows (`columns`) or rows through `preprocess`."""
        if "target" in batch:  # preprocessed: only stack the columns
            n = len(batch["target"])
            numeric = (np.stack([np.asarray(batch[f"f{i}"], np.float32)
                                 for i in range(self.features.n_numeric)], axis=1)
                       if self.features.n_numeric else np.zeros((n, 0), np.float32))
            cats = (np.stack([np.asarray(batch[f"bucket_{c}"], np.int64)
                              for c, _ in self.features.categorical], axis=1)
                    if self.features.categorical else np.zeros((n, 0), np.int64))
            target = np.array(batch["target"], dtype=np.float32)  # a writable copy
        else:
            rows = {c: v for c, v in batch.items()} or {"_rows": np.zeros(0)}
            numeric = numeric_features(rows, self.features, self.mean, self.std)
            cats = self._categories(lambda c: batch[c], arrow=False)
            target = _floats(batch["is_fraud"]).astype(np.float32)  # NaN: unlabeled
        return {"numeric": torch.from_numpy(numeric), "categories": torch.from_numpy(cats),
                "target": torch.from_numpy(target)}

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # A NaN target is an unlabeled row: it counts nowhere (not as "not fraud"). The
        # target is zeroed before the loss so that no NaN reaches the gradient.
        labelled = torch.isfinite(batch["target"])
        target = torch.where(labelled, batch["target"], 0.0)
        logits = model(batch["numeric"], batch["categories"]).float()
        weight = torch.tensor(self.pos_weight, device=logits.device)
        per_row = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight,
                                                     reduction="none")
        loss_sum = torch.where(labelled, per_row, 0.0).sum()
        count = labelled.sum().float()
        sums = {
            "loss_sum": loss_sum.detach(),
            "count": count.detach(),
            "positives": target.sum().detach(),
        }
        if not model.training:
            sums.update(score_histograms(torch.sigmoid(logits.detach())[labelled],
                                         target[labelled]))
        return loss_sum / count.clamp(min=1.0), sums

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        count = sums.get("count", 0.0)
        if not count:
            return {"loss": math.nan}
        out = {"loss": sums["loss_sum"] / count, "fraud_rate": sums["positives"] / count}
        if f"hist_pos_{HIST_BINS - 1}" in sums:
            pos = np.array([sums[f"hist_pos_{i}"] for i in range(HIST_BINS)])
            neg = np.array([sums[f"hist_neg_{i}"] for i in range(HIST_BINS)])
            out["roc_auc"] = roc_auc_from_histograms(pos, neg)
            out["pr_auc"] = pr_auc_from_histograms(pos, neg)
        return out


def pos_weight_for(fraud_rate: float, cap: float = 1000.0) -> float:
    """negatives / positives for a positive rate (1.0 without positives), capped."""
    if fraud_rate <= 0.0 or fraud_rate >= 1.0:
        return 1.0
    return float(min((1.0 - fraud_rate) / fraud_rate, cap))


def score_histograms(prob: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Counts of positive / negative rows per probability bin, one scalar per bin."""
    idx = torch.clamp((prob * HIST_BINS).long(), 0, HIST_BINS - 1)
    is_pos = target > 0.5
    pos = torch.bincount(idx[is_pos], minlength=HIST_BINS).double()
    neg = torch.bincount(idx[~is_pos], minlength=HIST_BINS).double()
    out = {f"hist_pos_{i}": pos[i] for i in range(HIST_BINS)}
    out.update({f"hist_neg_{i}": neg[i] for i in range(HIST_BINS)})
    return out


def _descending_cumsums(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Thresholds from the highest bin down: rows predicted positive at each cut.
    return np.cumsum(pos[::-1]), np.cumsum(neg[::-1])


def roc_auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC from binned scores; rows in one bin count as ties (half credit)."""
    n_pos, n_neg = float(pos.sum()), float(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    tp, fp = _descending_cumsums(pos, neg)
    tpr = np.concatenate([[0.0], tp / n_pos])
    fpr = np.concatenate([[0.0], fp / n_neg])
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))


def pr_auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision (area under the precision-recall steps) from binned scores."""
    n_pos = float(pos.sum())
    if n_pos == 0:
        return math.nan
    tp, fp = _descending_cumsums(pos, neg)
    predicted = tp + fp
    precision = np.divide(tp, predicted, out=np.ones_like(tp), where=predicted > 0)
    recall_gain = pos[::-1] / n_pos
    return float(np.sum(recall_gain * precision))


def _intercept(logit: np.ndarray, rate: float) -> float:
    """The shift of `logit` whose mean sigmoid is `rate` (bisection; it is monotone)."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2.0
        if float(np.mean(1.0 / (1.0 + np.exp(-(logit + mid))))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def synthetic_transactions(n: int, seed: int = 0, fraud_rate: float = 0.1,
                           val_fraction: float = 0.2) -> pa.Table:
    """A split table with the curated transactions schema and a learnable fraud signal.

    For tests, benchmarks and smoke runs: fraud is drawn from a logistic model of night
    hours, amount, a few risky merchant categories, velocity bursts and foreign countries,
    so that no single column gives it away. `split` is train or val (by cluster)."""
    rng = np.random.default_rng(seed)
    mccs = np.array(["5411", "5812", "5541", "5999", "4111", "7011", "5732", "4829", "7995"])
    risky = np.isin(mccs, ["5732", "4829", "7995"])
    countries = np.array(["US", "GB", "DE", "FR", "JP", "NG", "RU", "BR"])
    foreign = np.isin(countries, ["NG", "RU", "BR"])
    currency_of = {"US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "JP": "JPY",
                   "NG": "USD", "RU": "USD", "BR": "USD"}
    mcc_i = rng.integers(0, len(mccs), n)
    country_i = rng.choice(len(countries), n, p=[.3, .15, .15, .15, .1, .05, .05, .05])
    start = np.datetime64("2026-01-05T00:00:00", "us").astype(np.int64)
    us = start + rng.integers(0, 60 * _US_PER_DAY, n)
    hour = (us % _US_PER_DAY) // _US_PER_HOUR
    amount = np.round(np.exp(rng.normal(3.3, 1.0, n)), 2)
    v1 = rng.poisson(0.3, n)
    v24 = v1 + rng.poisson(2.0, n)
    logit = (2.2 * ((hour < 5) | (hour >= 23)) + 0.8 * (np.log(amount) - 3.3)
             + 2.2 * risky[mcc_i] + 1.2 * np.minimum(v1, 4) + 1.8 * foreign[country_i])
    is_fraud = rng.random(n) < 1.0 / (1.0 + np.exp(-(logit + _intercept(logit, fraud_rate))))
    country = countries[country_i]
    cluster = np.array([f"c{i:07d}" for i in range(n)])
    split = np.where(rng.random(n) < val_fraction, "val", "train")
    ids = np.array([f"t{seed}-{i:07d}" for i in range(n)])
    return pa.table({
        "txn_id": ids,
        "account_token": np.array([f"a{i % 97}" for i in range(n)]),
        "card_token": np.array([f"k{i % 131}" for i in range(n)]),
        "amount": pa.array([f"{a:.2f}" for a in amount]).cast(pa.decimal128(18, 2)),
        "currency": np.array([currency_of[c] for c in country]),
        "ts": pa.array(us, type=pa.timestamp("us", tz="UTC")),
        "merchant": np.array([f"m{i % 53}" for i in range(n)]),
        "mcc": mccs[mcc_i], "country": country, "is_fraud": is_fraud,
        "source": np.array([f"synthetic://transactions#{i}" for i in range(n)]),
        "content_hash": ids, "velocity_1h": v1.astype(np.int32),
        "velocity_24h": v24.astype(np.int32), "cluster_id": cluster, "split": split,
    })
