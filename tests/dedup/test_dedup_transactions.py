"""Transaction dedup: exact copies, replays, label conflicts, retries, velocity, reconciliation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from decimal import Decimal
from typing import Any

import pytest
from pyspark.sql import functions as F

from pipeline.config import DedupConfig
from pipeline.dedup.transactions import transaction_dedup
from pipeline.ingest.common import QUARANTINE_SCHEMA

pytestmark = pytest.mark.integration

SCHEMA = ("txn_id string, account_token string, card_token string, amount decimal(18,2), "
          "currency string, ts timestamp, merchant string, mcc string, country string, "
          "is_fraud boolean, source string, content_hash string")
T0 = dt.datetime(2026, 1, 5, 12, 0, 0, tzinfo=dt.UTC)


def row(txn: str, acct: str, amount: str, secs: float, source: str, merchant: str = "Blue Cafe",
        fraud: bool = False) -> tuple[Any, ...]:
    ts = T0 + dt.timedelta(seconds=secs)
    fields = (txn, acct, f"card-{acct}", Decimal(amount), "EUR", ts, merchant, "5812", "DE",
              fraud)
    digest = hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()
    return (*fields, source, digest)


def _rows() -> list[tuple[Any, ...]]:
    return [
        # t1 + an exact copy in another file (the copy has the larger source: dropped).
        row("t1", "acc-a", "10.00", 0, "file:///raw/part-000.csv:2"),
        row("t1", "acc-a", "10.00", 0, "file:///raw/part-001.csv:9"),
        # t2 replayed three hours later: the first by ts is kept.
        row("t2", "acc-b", "25.50", 7200 + 10_800, "file:///raw/part-000.csv:3"),
        row("t2", "acc-b", "25.50", 7200, "file:///raw/part-002.jsonl:4"),
        # t3: copies disagree on the label (plus an exact copy of one): all quarantined.
        row("t3", "acc-c", "99.00", 50, "file:///raw/part-000.csv:4", fraud=True),
        row("t3", "acc-c", "99.00", 50, "file:///raw/part-001.csv:5", fraud=False),
        row("t3", "acc-c", "99.00", 50, "file:///raw/part-002.jsonl:6", fraud=False),
        # t4 then retries t5 (+30 s), t6 (+90 s: chained, 60 s after t5), t7 (+400 s: new).
        row("t4", "acc-d", "42.00", 1000, "file:///raw/part-000.csv:5"),
        row("t5", "acc-d", "42.00", 1030, "file:///raw/part-000.csv:6"),
        row("t6", "acc-d", "42.00", 1090, "file:///raw/part-001.csv:7"),
        row("t7", "acc-d", "42.00", 1490, "file:///raw/part-001.csv:8"),
        # same account and amount, other merchant, 5 s later: not a retry.
        row("t8", "acc-d", "42.00", 1005, "file:///raw/part-001.csv:10", merchant="Oak Inn"),
        # t5 also replayed later: its duplicate must point at the chain head when dropped.
        row("t5", "acc-d", "42.00", 5000, "file:///raw/part-002.jsonl:7"),
        # velocity: acc-e at 0, +10 min, +2 h, +30 h.
        row("v1", "acc-e", "1.00", 0, "file:///raw/part-003.csv:2"),
        row("v2", "acc-e", "2.00", 600, "file:///raw/part-003.csv:3"),
        row("v3", "acc-e", "3.00", 7200, "file:///raw/part-003.csv:4"),
        row("v4", "acc-e", "4.00", 108_000, "file:///raw/part-003.csv:5"),
    ]


@pytest.fixture(scope="module")
def txns(spark):  # type: ignore[no-untyped-def]
    return spark.createDataFrame(_rows(), SCHEMA)


@pytest.fixture(scope="module")
def flagged(spark, txns):  # type: ignore[no-untyped-def]
    res = transaction_dedup(spark, txns, DedupConfig(retry_window_s=120, retry_policy="flag"))
    return (res, {r["txn_id"]: r.asDict() for r in res.kept.collect()},
            [r.asDict() for r in res.duplicates.collect()],
            [r.asDict() for r in res.quarantine.collect()])


@pytest.fixture(scope="module")
def dropped(spark, txns):  # type: ignore[no-untyped-def]
    res = transaction_dedup(spark, txns, DedupConfig(retry_window_s=120, retry_policy="drop"))
    return (res, {r["txn_id"]: r.asDict() for r in res.kept.collect()},
            [r.asDict() for r in res.duplicates.collect()],
            [r.asDict() for r in res.quarantine.collect()])


def test_counts_reconcile_under_both_policies(txns, flagged, dropped) -> None:  # type: ignore[no-untyped-def]
    n = txns.count()
    for _, kept, dups, quarantine in (flagged, dropped):
        assert len(kept) + len(dups) + len(quarantine) == n


def test_exact_copy_and_replay(flagged) -> None:  # type: ignore[no-untyped-def]
    _, kept, dups, _ = flagged
    by_dropped = {d["dropped_id"]: d for d in dups}
    exact = by_dropped["file:///raw/part-001.csv:9"]
    assert (exact["rule"], exact["kept_id"], exact["similarity"]) == ("txn_exact", "t1", 1.0)
    assert kept["t1"]["source"] == "file:///raw/part-000.csv:2"
    replay = by_dropped["file:///raw/part-000.csv:3"]  # the later copy of t2
    assert (replay["rule"], replay["kept_id"]) == ("txn_replay", "t2")
    assert kept["t2"]["source"] == "file:///raw/part-002.jsonl:4"


def test_label_conflict_quarantines_every_copy(flagged) -> None:  # type: ignore[no-untyped-def]
    res, kept, dups, quarantine = flagged
    assert "t3" not in kept and not any(d["kept_id"] == "t3" for d in dups)
    assert res.quarantine.schema == QUARANTINE_SCHEMA or \
        res.quarantine.columns == [f.name for f in QUARANTINE_SCHEMA]
    assert len(quarantine) == 3
    for q in quarantine:
        assert (q["stage"], q["reason"]) == ("dedup", "LABEL_CONFLICT")
        assert "t3" in q["detail"] and "false/true" in q["detail"] and "3 copies" in q["detail"]
        assert q["raw"].startswith("txn_id=t3 ")
    assert {q["source"] for q in quarantine} == {
        "file:///raw/part-000.csv:4", "file:///raw/part-001.csv:5", "file:///raw/part-002.jsonl:6"}


def test_retry_flag_policy_keeps_and_flags_chains(flagged) -> None:  # type: ignore[no-untyped-def]
    _, kept, dups, _ = flagged
    flags = {t: kept[t]["is_probable_retry"] for t in ("t4", "t5", "t6", "t7", "t8")}
    assert flags == {"t4": False, "t5": True, "t6": True, "t7": False, "t8": False}
    assert {kept[t]["cluster_id"] for t in ("t4", "t5", "t6")} == {"t4"}
    assert kept["t7"]["cluster_id"] == "t7"
    assert not any(d["rule"] == "txn_retry" for d in dups)
    replay_t5 = next(d for d in dups if d["dropped_id"] == "file:///raw/part-002.jsonl:7")
    assert (replay_t5["kept_id"], replay_t5["cluster_id"]) == ("t5", "t4")
    assert all(isinstance(k["is_probable_retry"], bool) for k in kept.values())


def test_retry_drop_policy_points_at_chain_head(dropped) -> None:  # type: ignore[no-untyped-def]
    _, kept, dups, _ = dropped
    assert {"t5", "t6"}.isdisjoint(kept) and {"t4", "t7", "t8"} <= set(kept)
    retries = {d["dropped_id"]: d for d in dups if d["rule"] == "txn_retry"}
    assert {d["kept_id"] for d in retries.values()} == {"t4"}
    assert set(retries) == {"file:///raw/part-000.csv:6", "file:///raw/part-001.csv:7"}
    replay_t5 = next(d for d in dups if d["dropped_id"] == "file:///raw/part-002.jsonl:7")
    assert replay_t5["kept_id"] == "t4"  # remapped: t5 itself was dropped
    kept_ids = set(kept)
    assert all(d["kept_id"] in kept_ids for d in dups)
    assert not any(k["is_probable_retry"] for k in kept.values())


def test_velocity_counts_earlier_kept_rows(flagged) -> None:  # type: ignore[no-untyped-def]
    _, kept, _, _ = flagged
    assert [kept[t]["velocity_1h"] for t in ("v1", "v2", "v3", "v4")] == [0, 1, 0, 0]
    assert [kept[t]["velocity_24h"] for t in ("v1", "v2", "v3", "v4")] == [0, 1, 2, 0]
    # acc-d: t4 at 1000, t8 at 1005, t5 at 1030, t6 at 1090, t7 at 1490 (flag keeps retries).
    assert [kept[t]["velocity_1h"] for t in ("t4", "t8", "t5", "t6", "t7")] == [0, 1, 2, 3, 4]


def test_kept_schema(flagged, txns) -> None:  # type: ignore[no-untyped-def]
    res = flagged[0]
    assert res.kept.columns == [*txns.columns, "cluster_id", "is_probable_retry",
                                "velocity_1h", "velocity_24h"]
    types = dict(res.kept.dtypes)
    assert (types["velocity_1h"], types["velocity_24h"], types["is_probable_retry"]) == \
        ("int", "int", "boolean")
    assert [f.name for f in res.duplicates.schema] == \
        ["dropped_id", "kept_id", "rule", "similarity", "cluster_id"]


def test_deterministic_under_reordering(spark, txns, dropped) -> None:  # type: ignore[no-untyped-def]
    shuffled = txns.orderBy(F.rand(7)).repartition(5)
    res = transaction_dedup(spark, shuffled, DedupConfig(retry_window_s=120,
                                                         retry_policy="drop"))
    kept = {r["txn_id"]: r.asDict() for r in res.kept.collect()}
    assert kept == dropped[1]
    key = lambda d: d["dropped_id"]  # noqa: E731
    assert sorted((r.asDict() for r in res.duplicates.collect()), key=key) == \
        sorted(dropped[2], key=key)


def test_window_config_is_respected(spark, txns) -> None:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(DedupConfig(), retry_window_s=10, retry_policy="flag")
    kept = {r["txn_id"]: r["is_probable_retry"]
            for r in transaction_dedup(spark, txns, cfg).kept.collect()}
    assert not kept["t5"] and not kept["t6"]  # 30 s and 60 s gaps exceed a 10 s window
