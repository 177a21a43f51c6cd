"""The run lock on S3 (moto): conditional create and conditional takeover."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.orchestrator.lock import RunLock, _store_for, lock_of, read_lock
from pipeline.storage import Location
from tests.orchestrator.test_lock import _race
from tests.storage_s3.conftest import S3Bucket

pytestmark = pytest.mark.integration


def test_racing_acquirers_on_s3_exactly_one_wins(s3_bucket: S3Bucket) -> None:
    run = Location(s3_bucket.url("runs", "race"), s3_bucket.options)
    for _ in range(2):
        winners = _race(run, n=6)
        assert len(winners) == 1
        held = read_lock(lock_of(run))
        assert held is not None and winners[0].info is not None
        assert held.token == winners[0].info.token
        winners[0].release()
        assert read_lock(lock_of(run)) is None


def test_s3_takeover_and_heartbeat_are_conditional(s3_bucket: S3Bucket) -> None:
    run = Location(s3_bucket.url("runs", "k"), s3_bucket.options)
    lock = lock_of(run)
    old = time.time() - 300
    lock.write_json({"host": "h", "pid": 1, "token": "old", "started": old, "heartbeat": old})
    store = _store_for(lock, 0.0)
    seen = store.read()
    assert seen is not None
    # The holder rewrote the lock after the taker read it: the conditional delete fails.
    lock.write_json({"host": "h", "pid": 1, "token": "old", "started": old,
                     "heartbeat": time.time()})
    assert store.delete(seen) is False and store.beat(seen, b"{}") is None
    assert json.loads(lock.read_bytes())["token"] == "old"
    # A lock really abandoned is taken over, and the heartbeat keeps the new one alive.
    lock.write_json({"host": "h", "pid": 1, "token": "old", "started": old, "heartbeat": old})
    with RunLock(run, stale_s=60.0, heartbeat_s=0.05) as mine:
        assert mine.info is not None
        first = read_lock(lock)
        time.sleep(0.3)
        later = read_lock(lock)
        assert first is not None and later is not None and later.heartbeat > first.heartbeat
        assert later.token == mine.info.token
        mine.check()
    assert read_lock(lock) is None
