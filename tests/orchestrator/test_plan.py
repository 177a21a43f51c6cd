from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pipeline.orchestrator import RunInterrupted, SelectionError, StageFailed, plan, run_pipeline
from pipeline.orchestrator.plan import run_paths

pytestmark = pytest.mark.unit


def _decisions(entries: list[Any]) -> dict[str, tuple[str, str]]:
    return {e.stage: (e.decision, e.reason) for e in entries}


def test_fresh_run_plans_everything_with_reasons(graph: Any, make_cfg: Callable[..., Any]
                                                 ) -> None:
    entries = _decisions(plan(make_cfg(), graph.stages()))
    assert entries["synth"] == ("run", "no published output")
    assert entries["ingest/text"] == ("run", "will run: upstream synth re-runs")
    assert entries["reports/summary"] == (
        "run", "will run: upstream evaluate/text, evaluate/images re-run")
    assert graph.calls == []  # planning runs nothing


def test_finished_run_is_cached_with_input_sizes(graph: Any, make_cfg: Callable[..., Any]
                                                 ) -> None:
    run_pipeline(make_cfg(), graph.stages())
    entries = {e.stage: e for e in plan(make_cfg(), graph.stages())}
    assert {e.decision for e in entries.values()} == {"cached"}
    dedup = entries["dedup/text"]
    assert [i.name for i in dedup.inputs] == ["ingest/text"]
    assert dedup.input_rows == 10 and dedup.inputs[0].files == 1
    assert dedup.input_bytes is not None and dedup.input_bytes > 100
    assert entries["ingest/text"].inputs[0].files == 2  # synth wrote one file per task


def test_one_train_task_config_change_reruns_only_its_branch(
        graph: Any, make_cfg: Callable[..., Any]) -> None:
    run_pipeline(make_cfg(), graph.stages())
    cfg = make_cfg("train.text.lr=0.01")
    entries = _decisions(plan(cfg, graph.stages()))
    assert entries["train/text"] == ("run", "config changed")
    assert entries["evaluate/text"] == ("run", "will run: upstream train/text re-runs")
    assert entries["reports/summary"][0] == "run"
    assert entries["train/images"][0] == entries["evaluate/images"][0] == "cached"
    assert entries["dedup/text"][0] == "cached"
    graph.calls.clear()
    outcomes = run_pipeline(cfg, graph.stages())
    assert graph.calls == ["train/text", "evaluate/text", "reports/summary"]
    assert {o.name: o.state for o in outcomes}["train/images"] == "cached"


def test_input_and_code_version_changes_are_named(graph: Any,
                                                  make_cfg: Callable[..., Any]) -> None:
    run_pipeline(make_cfg(), graph.stages())
    # Re-run dedup/text alone with another seed: train/text's input changed under it.
    run_pipeline(make_cfg("dedup.seed=5"), graph.stages(), selected=["dedup/text"])
    entries = _decisions(plan(make_cfg("dedup.seed=5"), graph.stages()))
    assert entries["train/text"] == ("run", "input dedup/text changed")
    assert entries["dedup/images"] == ("run", "config changed")
    assert entries["dedup/text"][0] == "cached"
    later = _decisions(plan(make_cfg(), graph.stages(), version="9.9.9+feedbeef"))
    assert later["synth"][0] == "run"
    assert later["synth"][1].startswith("code version changed (")
    assert "-> 9.9.9+feedbeef)" in later["synth"][1]


def test_interrupted_stage_resumes_there(graph: Any, make_cfg: Callable[..., Any]) -> None:
    graph.failures["train/images"] = [KeyboardInterrupt()]
    with pytest.raises(RunInterrupted, match="stage train/images of run t interrupted"):
        run_pipeline(make_cfg(), graph.stages())
    state = run_paths(make_cfg()).run_json.read_json()
    assert state["stages"]["train/images"]["state"] == "interrupted"
    entries = _decisions(plan(make_cfg(), graph.stages()))
    assert entries["train/images"] == ("run", "running stage interrupted (will resume)")
    assert entries["train/text"][0] == "cached"
    graph.calls.clear()
    run_pipeline(make_cfg(), graph.stages())
    assert graph.calls == ["train/images", "evaluate/text", "evaluate/images",
                           "reports/summary"]


def test_failed_stage_reason_and_state(graph: Any, make_cfg: Callable[..., Any]) -> None:
    graph.failures["dedup/images"] = [ValueError("gate failed: 40% duplicates")]
    with pytest.raises(StageFailed, match=r"stage dedup/images of run t failed: ValueError: "
                                          r"gate failed: 40% duplicates"):
        run_pipeline(make_cfg(), graph.stages())
    rec = run_paths(make_cfg()).run_json.read_json()["stages"]["dedup/images"]
    assert rec["state"] == "failed" and rec["attempts"] == 1
    assert rec["error"] == "ValueError: gate failed: 40% duplicates"
    entries = _decisions(plan(make_cfg(), graph.stages()))
    assert entries["dedup/images"] == (
        "run", "previous attempt failed (ValueError: gate failed: 40% duplicates)")


def test_selection_needs_published_inputs(graph: Any, make_cfg: Callable[..., Any]) -> None:
    names = [s.name for s in graph.stages()]
    train_on = [n for n in names if n.startswith(("train/", "evaluate/", "reports/"))]
    entries = _decisions(plan(make_cfg(), graph.stages(), selected=train_on))
    assert entries["train/text"] == (
        "blocked", "input dedup/text was never published: select it too (e.g. --from dedup/text)")
    assert entries["evaluate/text"] == ("blocked", "upstream train/text is blocked")
    assert entries["dedup/text"] == ("unselected", "not selected; never published")
    with pytest.raises(SelectionError, match=r"run t cannot start: stage train/text: input "
                                             r"dedup/text was never published"):
        run_pipeline(make_cfg(), graph.stages(), selected=train_on)
    assert graph.calls == []  # nothing ran before the problem was reported


def test_unselected_stale_upstream_is_used_as_is(graph: Any,
                                                 make_cfg: Callable[..., Any]) -> None:
    run_pipeline(make_cfg(), graph.stages())
    cfg = make_cfg("dedup.seed=3")
    entries = _decisions(plan(cfg, graph.stages(), selected=["train/text", "train/images"]))
    assert entries["dedup/text"] == (
        "unselected", "not selected; published output is out of date (config changed) but is "
        "used as is")
    assert entries["train/text"][0] == "cached"
    assert entries["synth"] == ("unselected", "not selected; published output is up to date")


def test_disabled_stage(graph: Any, make_cfg: Callable[..., Any]) -> None:
    from dataclasses import replace

    stages = [replace(s, enabled=lambda cfg: False) if s.name == "evaluate/images" else s
              for s in graph.stages()]
    entries = _decisions(plan(make_cfg(), stages))
    assert entries["evaluate/images"] == ("disabled", "disabled by config")
    outcomes = run_pipeline(make_cfg(), stages)
    assert {o.name: o.state for o in outcomes}["evaluate/images"] == "skipped"
    assert "evaluate/images" not in graph.calls
