from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from pipeline.orchestrator import (
    RetryableError,
    RetryPolicy,
    SelectionError,
    StageFailed,
    run_pipeline,
    select,
)
from pipeline.orchestrator.plan import run_paths
from pipeline.orchestrator.retry import is_retryable

pytestmark = pytest.mark.unit

NAMES = ["synth", "ingest/text", "ingest/images", "dedup/text", "dedup/images", "train/text",
         "train/images", "evaluate/text"]


def test_from_until_only_in_graph_order() -> None:
    assert select(NAMES) == NAMES
    assert select(NAMES, from_="dedup") == NAMES[3:]
    assert select(NAMES, from_="dedup/images") == NAMES[4:]
    assert select(NAMES, until="ingest") == NAMES[:3]
    assert select(NAMES, from_="ingest/images", until="dedup/text") == NAMES[2:4]
    assert select(NAMES, only=["evaluate/text", "ingest"]) == [
        "ingest/text", "ingest/images", "evaluate/text"]
    assert select(NAMES, only=["train/"]) == ["train/text", "train/images"]


def test_bad_selections_say_what_is_valid() -> None:
    with pytest.raises(SelectionError, match=r"unknown stage 'trian'; valid stages and groups: "
                                             r"synth, ingest, ingest/text"):
        select(NAMES, from_="trian")
    with pytest.raises(SelectionError, match="unknown stage 'dedup/txt'"):
        select(NAMES, only=["dedup/txt"])
    with pytest.raises(SelectionError, match="--from train comes after --until ingest"):
        select(NAMES, from_="train", until="ingest")
    with pytest.raises(SelectionError, match="--only on its own"):
        select(NAMES, from_="train", only=["synth"])
    # "train" must not match a stage that merely starts with the same letters.
    assert select(["train", "trainer/x"], only=["train"]) == ["train"]


def test_backoff_numbers_are_capped_exponential() -> None:
    policy = RetryPolicy(max_attempts=6, initial_s=1.0, max_s=5.0, multiplier=2.0)
    assert [policy.delay(a) for a in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert RetryPolicy(initial_s=0.5, multiplier=3.0).delay(3) == 4.5
    with pytest.raises(ValueError, match="max_attempts must be >= 1, got 0"):
        RetryPolicy(max_attempts=0)


def test_decisions_and_log_sentences(caplog: pytest.LogCaptureFixture) -> None:
    policy = RetryPolicy(max_attempts=3, initial_s=2.0, max_s=30.0)
    with caplog.at_level(logging.WARNING, logger="pipeline.orchestrator.retry"):
        first = policy.decide("train/text", 1, ConnectionError("peer reset"))
        last = policy.decide("train/text", 3, ConnectionError("peer reset"))
        bug = policy.decide("train/text", 1, KeyError("label"))
    assert (first.retry, first.delay_s) == (True, 2.0)
    assert first.message == ("stage train/text attempt 1/3 failed with ConnectionError: "
                             "peer reset; retrying in 2.0 s")
    assert not last.retry and last.message.endswith("; no attempts left")
    assert not bug.retry and bug.message.endswith("; not retryable")
    assert first.message in caplog.text and bug.message in caplog.text


def test_what_counts_as_transient() -> None:
    import py4j.protocol
    import ray.exceptions

    class GatewayBusy(RetryableError):
        pass

    assert is_retryable(ConnectionResetError("reset"))
    assert is_retryable(TimeoutError("slow"))
    assert is_retryable(GatewayBusy("try later"))
    assert is_retryable(py4j.protocol.Py4JNetworkError("gateway gone"))
    assert is_retryable(ray.exceptions.GetTimeoutError("get timed out"))
    wrapped = ray.exceptions.RayTaskError("f", "traceback", ConnectionError("x"))
    assert is_retryable(wrapped) and is_retryable(wrapped.as_instanceof_cause())
    assert not is_retryable(ray.exceptions.RayTaskError("f", "traceback", ValueError("x")))
    train_failed = RuntimeError("training failed")
    train_failed.__cause__ = ConnectionError("x")
    assert not is_retryable(train_failed)  # a plain RuntimeError is not a known wrapper
    for permanent in (ValueError("bad"), OSError("disk full"), FileNotFoundError("gone"),
                      KeyboardInterrupt()):
        assert not is_retryable(permanent)


def test_runner_retries_transient_failures(graph: Any, make_cfg: Callable[..., Any]) -> None:
    slept: list[float] = []
    graph.failures["dedup/text"] = [ConnectionError("executor lost"), TimeoutError("slow")]
    outcomes = {o.name: o for o in run_pipeline(make_cfg(), graph.stages(),
                                                sleep=slept.append)}
    # make_cfg: backoff_initial_s 0.5, max 2.0, default max_attempts 3
    assert slept == [0.5, 1.0]
    assert outcomes["dedup/text"].state == "ran" and outcomes["dedup/text"].attempts == 3
    assert graph.calls.count("dedup/text") == 3
    rec = run_paths(make_cfg()).run_json.read_json()["stages"]["dedup/text"]
    assert rec["state"] == "done" and rec["attempts"] == 3
    assert rec["errors"] == ["ConnectionError: executor lost", "TimeoutError: slow"]


def test_runner_gives_up(graph: Any, make_cfg: Callable[..., Any]) -> None:
    slept: list[float] = []
    graph.failures["ingest/images"] = [ConnectionError("down")] * 3
    with pytest.raises(StageFailed, match=r"stage ingest/images of run t failed \(after 3 "
                                          r"attempts\): ConnectionError: down"):
        run_pipeline(make_cfg(), graph.stages(), sleep=slept.append)
    assert slept == [0.5, 1.0]
    graph.calls.clear()
    graph.failures["ingest/images"] = [ValueError("schema")]
    with pytest.raises(StageFailed, match="ValueError: schema"):
        run_pipeline(make_cfg(), graph.stages(), sleep=slept.append)
    assert graph.calls == ["ingest/images"] and slept == [0.5, 1.0]  # no retry, no wait
