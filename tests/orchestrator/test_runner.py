from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.orchestrator import Stage, StageContext, StageFailed, StageResult, run_pipeline
from pipeline.storage import Location, RunPaths, is_published, read_manifest

pytestmark = pytest.mark.unit

CALLS: list[str] = []


def _writer(name: str, payload_of: Any) -> Stage:
    def run(ctx: StageContext) -> StageResult:
        CALLS.append(name)
        fs, path = ctx.output.filesystem()
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
    state = RunPaths(Location(f"file://{tmp_path}"), "t").run_json.read_json()
    assert {s["state"] for s in state["stages"].values()} == {"done"}
    assert state["config"]["train"]["epochs"] == 7


def test_failed_stage_publishes_nothing_and_resumes(tmp_path: Path) -> None:
    CALLS.clear()
    good = _stages()

    def boom(ctx: StageContext) -> StageResult:
        (ctx.output / "partial.txt").write_bytes(b"half")
        raise OSError("disk on fire")

    broken = [good[0], Stage(name="b", run=boom, config_of=good[1].config_of, inputs=("a",)),
              good[2]]
    with pytest.raises(StageFailed, match="stage b of run t failed: OSError: disk on fire"):
        run_pipeline(_cfg(tmp_path), broken)
    run = RunPaths(Location(f"file://{tmp_path}"), "t")
    assert is_published(run.stage("a")) and not is_published(run.stage("b"))
    assert not list((tmp_path / "runs/t/_staging").glob("*"))
    assert run.run_json.read_json()["stages"]["b"]["state"] == "failed"
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


def test_runner_carries_out_the_plan_and_decides_only_downstream_of_what_ran(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stage the plan found cached is recorded with the plan's key (its config is read
    once, by the plan); only downstream of a stage that ran is a key computed again, from
    the manifest that stage just published."""
    import pipeline.orchestrator.runner as runner

    decided: list[str] = []
    configs: list[str] = []
    real = runner.decide

    def counting(stage: Stage, *args: Any, **kwargs: Any) -> Any:
        decided.append(stage.name)
        return real(stage, *args, **kwargs)

    monkeypatch.setattr(runner, "decide", counting)

    def counted(stage: Stage) -> Stage:
        def config_of(cfg: PipelineConfig) -> Any:
            configs.append(stage.name)
            return stage.config_of(cfg)
        return Stage(name=stage.name, run=stage.run, config_of=config_of, inputs=stage.inputs)

    stages = [counted(s) for s in _stages()]
    CALLS.clear()
    run_pipeline(_cfg(tmp_path), stages)
    assert decided == ["b", "c"]  # a ran with the planned key; b and c waited for upstream
    decided.clear()
    configs.clear()
    assert [o.state for o in run_pipeline(_cfg(tmp_path), stages)] == ["cached"] * 3
    assert decided == [] and configs == ["a", "b", "c"]  # the plan's, once each
    # b's config changes: a stays cached as planned, b runs with the planned key, c's key
    # is computed from the manifest b published in this call.
    decided.clear()
    CALLS.clear()
    outcomes = run_pipeline(_cfg(tmp_path, "train.epochs=7"), stages)
    assert [o.state for o in outcomes] == ["cached", "ran", "ran"] and CALLS == ["b", "c"]
    assert decided == ["c"]
    run = RunPaths(Location(f"file://{tmp_path}"), "t")
    rec = run.run_json.read_json()["stages"]["c"]
    assert rec["key_parts"]["inputs"] == {"b": read_manifest(run.stage("b")).digest}
    assert read_manifest(run.stage("c")).cache_key == rec["cache_key"]
    # a re-runs (its manifest is gone) and publishes the same manifest: b and c, planned to
    # run after it, are decided again and found cached.
    (tmp_path / "runs/t/a/_MANIFEST.json").unlink()
    decided.clear()
    CALLS.clear()
    outcomes = run_pipeline(_cfg(tmp_path, "train.epochs=7"), stages)
    assert [(o.state, o.reason) for o in outcomes] == [
        ("ran", "no published output"),
        ("cached", "up to date (cache key matches the published manifest)"),
        ("cached", "up to date (cache key matches the published manifest)")]
    assert CALLS == ["a"] and decided == ["b", "c"]
