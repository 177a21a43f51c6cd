"""`pipeline run / plan / status / lineage` through `pipeline.cli.main`, on the fake graph."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.orchestrator.lock import LOCK_NAME, RunLock
from pipeline.storage import Location

pytestmark = pytest.mark.unit


@pytest.fixture
def cli(tmp_path: Path, graph: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make `pipeline run` use the fake graph; returns the common arguments."""
    import pipeline.graph

    monkeypatch.setattr(pipeline.graph, "default_stages", graph.stages)
    return ["--set", f"storage.root=file://{tmp_path}", "--set", "orchestrator.max_attempts=1"]


def _text(captured: str) -> str:
    return " ".join(captured.split())  # rich wraps at the console width


def test_run_then_rerun_says_nothing_to_do(cli: list[str], graph: Any,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *cli, "--run-id", "r1"]) == 0
    out = _text(capsys.readouterr().out)
    assert "run r1" in out and "10 stage(s) ran, 0 cached" in out
    assert "reports/summary/summary.html" in out
    graph.calls.clear()
    assert main(["run", *cli, "--run-id", "r1"]) == 0
    assert "nothing to do: every stage is up to date" in _text(capsys.readouterr().out)
    assert graph.calls == []


def test_failure_exits_1_naming_stage_run_and_cause(cli: list[str], graph: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    graph.failures["dedup/images"] = [ValueError("3 rows lost")]
    assert main(["run", *cli, "--run-id", "r2"]) == 1
    err = _text(capsys.readouterr().err)
    assert "failed: stage dedup/images of run r2 failed: ValueError: 3 rows lost" in err
    assert main(["status", "r2", *cli, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    rec = {s["name"]: s for s in status["stages"]}["dedup/images"]
    assert rec["state"] == "failed" and rec["error"] == "ValueError: 3 rows lost"


def test_ctrl_c_exits_130(cli: list[str], graph: Any, capsys: pytest.CaptureFixture[str]
                          ) -> None:
    graph.failures["train/text"] = [KeyboardInterrupt()]
    assert main(["run", *cli, "--run-id", "r3"]) == 130
    assert ("interrupted: stage train/text of run r3 interrupted; `pipeline run` resumes it"
            in _text(capsys.readouterr().err))


def test_locked_run_exits_1(tmp_path: Path, cli: list[str],
                            capsys: pytest.CaptureFixture[str]) -> None:
    # Held by this very process (live pid): a second run of the same id must refuse.
    with RunLock(Location(f"file://{tmp_path}/runs/r4"), stale_s=60.0):
        assert main(["run", *cli, "--run-id", "r4"]) == 1
    err = _text(capsys.readouterr().err)
    assert "locked: run r4 is locked by pid" in err and LOCK_NAME in err


def test_selection_and_dry_run(cli: list[str], graph: Any,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *cli, "--run-id", "r5", "--from", "train"]) == 2
    err = _text(capsys.readouterr().err)
    assert "cannot run: run r5 cannot start: stage train/text: input dedup/text was never " \
           "published: select it too (e.g. --from dedup/text)" in err
    assert main(["run", *cli, "--run-id", "r5", "--only", "trian"]) == 2
    assert "unknown stage 'trian'" in _text(capsys.readouterr().err)
    assert main(["run", *cli, "--run-id", "r5", "--until", "dedup"]) == 0
    capsys.readouterr()
    graph.calls.clear()
    assert main(["run", *cli, "--run-id", "r5", "--dry-run", "--set", "train.text.lr=0.1"]) == 0
    assert graph.calls == []
    dry = _text(capsys.readouterr().out)
    assert "plan of run r5" in dry and "config changed" not in dry  # train never ran here
    assert "5 run, 5 cached" in dry
    assert main(["plan", *cli, "--run-id", "r5", "--json", "--set", "train.text.lr=0.1"]) == 0
    entries = {e["stage"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["dedup/text"]["decision"] == "cached"
    assert entries["train/text"]["reason"] == "no published output"
    assert entries["train/text"]["input_rows"] == 8
    assert entries["evaluate/text"]["reason"] == "will run: upstream train/text re-runs"


def test_status_and_lineage_output(cli: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", *cli, "--run-id", "r6"]) == 0
    capsys.readouterr()
    assert main(["status", "r6", *cli]) == 0
    out = _text(capsys.readouterr().out)
    assert "evaluate/text" in out and "accuracy=0.75" in out and "kept=8" in out
    assert "summary.html" in out
    assert main(["lineage", "r6", *cli]) == 0
    out = _text(capsys.readouterr().out)
    assert "text (from evaluate/text): ok" in out and "-> checkpoint" in out
    assert "-> raw files sample data from synth manifest" in out
    assert main(["lineage", "r6", *cli, "--json"]) == 0
    chains = json.loads(capsys.readouterr().out)
    assert [c["ok"] for c in chains] == [True, True]
    assert main(["status", "missing", *cli]) == 1
    assert "not found: no run 'missing'" in _text(capsys.readouterr().err)
