from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.orchestrator import Stage, StageContext, StageFailed, StageResult, run_pipeline
from pipeline.storage import RunPaths, filesystem, is_published, read_json, read_manifest

pytestmark = pytest.mark.unit

CALLS: list[str] = []


def _writer(name: str, payload_of: Any) -> Stage:
    def run(ctx: StageContext) -> StageResult:
        CALLS.append(name)
        fs, path = filesystem(ctx.staging_url)
        upstream = "".join(sorted(m.digest[:6] for m in ctx.inputs.values()))
        with fs.open(f"{path}/out.txt", "wb") as fh:
            fh.write(f"{payload_of(ctx.cfg)}|{upstream}".encode())
        return StageResult(row_counts={"rows": 1}, summary=f"{name} wrote 1 row")

    return Stage(name=name, run=run, config_of=payload_of)


def _stages() -> list[Stage]:
    a = _writer("a", lambda cfg: cfg.synth.seed)
    b = _writer("b", lambda cfg: cfg.train.epochs)
    b = Stage(name=b.name, run=b.run, config_of=b.config_of, inputs=("a",))
    c = _writer("c", lambda cfg: "fixed")
    c = Stage(name=c.name, run=c.run, config_of=c.config_of, inputs=("b",))
    return [a, b, c]


def _cfg(tmp_path: Path, *overrides: str) -> PipelineConfig:
    return config_from_dict({"storage": {"root": f"file://{tmp_path}"}, "run_id": "t"},
                            list(overrides))


def test_rerun_is_a_noop_and_changes_rerun_downstream(tmp_path: Path) -> None:
    CALLS.clear()
    outcomes = run_pipeline(_cfg(tmp_path), _stages())
    assert [o.state for o in outcomes] == ["ran", "ran", "ran"]
    assert CALLS == ["a", "b", "c"]
    CALLS.clear()
    assert [o.state for o in run_pipeline(_cfg(tmp_path), _stages())] == ["cached"] * 3
    assert CALLS == []
    # Changing b's config re-runs b and c (c's input digest changed), not a.
    outcomes = run_pipeline(_cfg(tmp_path, "train.epochs=7"), _stages())
    assert [o.state for o in outcomes] == ["cached", "ran", "ran"]
    assert CALLS == ["b", "c"]
    state = read_json(RunPaths(f"file://{tmp_path}", "t").run_json)
    assert {s["state"] for s in state["stages"].values()} == {"done"}
    assert state["config"]["train"]["epochs"] == 7


def test_failed_stage_publishes_nothing_and_resumes(tmp_path: Path) -> None:
    CALLS.clear()
    good = _stages()

    def boom(ctx: StageContext) -> StageResult:
        fs, path = filesystem(ctx.staging_url)
        fs.pipe_file(f"{path}/partial.txt", b"half")
        raise OSError("disk on fire")

    broken = [good[0], Stage(name="b", run=boom, config_of=good[1].config_of, inputs=("a",)),
              good[2]]
    with pytest.raises(StageFailed, match="stage b of run t failed: OSError: disk on fire"):
        run_pipeline(_cfg(tmp_path), broken)
    run = RunPaths(f"file://{tmp_path}", "t")
    assert is_published(run.stage("a")) and not is_published(run.stage("b"))
    assert not list((tmp_path / "runs/t/_staging").glob("*"))
    assert read_json(run.run_json)["stages"]["b"]["state"] == "failed"
    CALLS.clear()
    outcomes = run_pipeline(_cfg(tmp_path), good)
    assert [o.state for o in outcomes] == ["cached", "ran", "ran"]
    assert read_manifest(run.stage("c")).row_counts == {"rows": 1}


def test_disabled_stage_is_skipped(tmp_path: Path) -> None:
    stages = _stages()
    a = Stage(name="a", run=stages[0].run, config_of=stages[0].config_of,
              enabled=lambda cfg: False)
    outcomes = run_pipeline(_cfg(tmp_path), [a, stages[1], stages[2]])
    assert [o.state for o in outcomes] == ["skipped", "ran", "ran"]
