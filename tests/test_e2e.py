"""End to end: the whole default graph on tiny sample data, in local mode (the session's
`sample_run`, tests/conftest.py).

1. every stage runs (synth, ingest, dedup, reports/dedup, train, evaluate, reports/summary)
   and the reports exist; a second `pipeline run` does nothing and says so; changing one
   task's training config re-runs only that train, its evaluate and the summary;
2. `pipeline run` as a real process is killed (by pid) in the middle of training; the
   next `pipeline run` resumes from the last checkpoint and ends with the same metrics as
   an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.graph import default_stages
from pipeline.orchestrator import run_pipeline
from pipeline.storage import Location, RunPaths, read_manifest
from pipeline.train.faults import FAULT_ENV

REPO = Path(__file__).resolve().parents[1]
TASKS = ("text", "images", "transactions")

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.conftest import SampleRun


def _states(outcomes: Any) -> dict[str, str]:
    return {o.name: o.state for o in outcomes}


@pytest.mark.integration
def test_whole_graph_runs_every_stage_and_writes_the_reports(sample_run: SampleRun) -> None:
    states = _states(sample_run.outcomes)
    expected = {"synth", *(f"{kind}/{t}" for kind in ("ingest", "dedup", "train", "evaluate")
                           for t in TASKS), "reports/dedup", "reports/summary"}
    assert set(states) == expected
    assert set(states.values()) == {"ran"}
    paths = sample_run.paths
    run = sample_run.run_dir
    for name in ("reports/dedup/dedup.html", "reports/summary/index.html",
                 *(f"evaluate/{t}/report.html" for t in TASKS),
                 *(f"train/{t}/result.json" for t in TASKS)):
        assert (run / name).stat().st_size > 0, name
    # Every report `pipeline run` prints is a file of its stage, and the outcomes list them.
    reports = [u for o in sample_run.outcomes for u in o.reports]
    assert f"{paths.run.url}/reports/summary/index.html" in reports
    assert all(Path(u.removeprefix("file://")).is_file() for u in reports)
    for task in TASKS:
        extra = read_manifest(paths.stage(f"evaluate/{task}")).extra
        finite = [v for v in extra["metrics"].values() if isinstance(v, float)
                  and math.isfinite(v)]
        assert finite, f"evaluate/{task} reported no finite metric"
        assert extra["checkpoint"] and extra["checkpoint_digest"]
    state = paths.run_json.read_json()
    assert {s["state"] for s in state["stages"].values()} == {"done"}


@pytest.mark.integration
def test_second_run_is_a_noop_and_one_task_change_reruns_only_its_stages(
        sample_run: SampleRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(sample_run.config_dict()))
    assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out

    # A changed training setting, on a copy of the run (others read the published one):
    # the copy's manifests name the original's checkpoints, which are the same files.
    copy = tmp_path / "copy"
    shutil.copytree(sample_run.root / "runs", copy / "runs")
    changed = run_pipeline(sample_run.cfg("train.images.lr=0.005", root=copy),
                           default_stages())
    ran = {name for name, state in _states(changed).items() if state == "ran"}
    assert ran == {"train/images", "evaluate/images", "reports/summary"}
    # The old model's checkpoints are kept aside, not resumed with the new settings.
    checkpoints = copy / "runs" / sample_run.run_id / "checkpoints"
    assert [p.name.split("-")[0] for p in (checkpoints / "superseded").iterdir()] == [
        "train_images"]


# --- a killed `pipeline run` resumes from its checkpoint ---------------------------------

#: the sample run's training, of transactions only (the fastest task), with a checkpoint
#: every 4 of its ~35 steps so that the kill lands mid-training with a committed checkpoint
#: behind it (checkpoint frequency does not change what is trained)
HANG_STEP = 6


def _resume_settings(sample_run: SampleRun, root: Path) -> dict[str, Any]:
    settings = sample_run.config_dict(root)
    train = settings["train"]
    # On a Ray Train worker, killed with its driver; the reference trained in local mode,
    # which gives one worker's results.
    settings["train"] = {**train, "checkpoint_every_steps": 4,
                         "scaling": {**train["scaling"], "num_workers": 1},
                         "text": {**train["text"], "enabled": False},
                         "images": {**train["images"], "enabled": False}}
    return settings


def _pipeline_run(config: Path, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    # Output to a file: a pipe nobody reads would block the process once it is full.
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", "--config",
                             str(config)], cwd=REPO, env=env, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)


def _final_metrics(paths: RunPaths) -> tuple[dict[str, Any], dict[str, Any]]:
    train = read_manifest(paths.stage("train/transactions")).extra["final_metrics"]
    evaluate = read_manifest(paths.stage("evaluate/transactions")).extra["metrics"]
    return train, evaluate


def _assert_close(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.endswith(("_seconds", "_per_s")):  # wall-clock figures, not results
            continue
        if isinstance(value, float) and isinstance(got[key], float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
        else:
            assert got[key] == value, key


@pytest.mark.chaos
def test_killed_pipeline_run_resumes_from_the_checkpoint_with_the_same_metrics(
        sample_run: SampleRun, tmp_path: Path) -> None:
    # The uninterrupted reference is the sample run's transactions model (same data, same
    # training settings); the killed run starts from copies of its data stages (same
    # manifests and cache keys), so it spends its time where the test is, in training.
    want = _final_metrics(sample_run.paths)
    killed_root = tmp_path / "killed"
    run_id = sample_run.run_id
    for stage in ("synth", "ingest", "dedup", "reports/dedup"):
        shutil.copytree(sample_run.run_dir / stage, killed_root / "runs" / run_id / stage)
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump(_resume_settings(sample_run, killed_root)))
    marker = tmp_path / "hang-reached"
    env = {**os.environ, FAULT_ENV: f"hang:{HANG_STEP}:0:{marker}"}
    log_path = tmp_path / "killed-run.log"
    with log_path.open("wb") as log:
        proc = _pipeline_run(config, env, log)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            if proc.poll() is not None:
                err = log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"pipeline run exited early ({proc.returncode}): {err}")
            assert time.monotonic() < deadline, "training never reached the hang step"
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, Ray included
        proc.wait(timeout=60)

    paths = RunPaths(Location(f"file://{killed_root}"), run_id)
    state = paths.run_json.read_json()
    assert state["stages"].get("dedup/transactions", {}).get("state") != "running"
    assert state["stages"]["train/transactions"]["state"] == "running"  # killed mid-stage
    assert "evaluate/transactions" not in state["stages"]

    # Killed after step HANG_STEP: the last committed checkpoint is that of step 4,
    # mid-epoch. A newer folder without checkpoint.json (a save cut short) is not one.
    checkpoints = killed_root / "runs" / run_id / "checkpoints" / "train_transactions"
    committed = sorted(p.name for p in checkpoints.iterdir()
                       if (p / "checkpoint.json").is_file())
    assert committed == ["checkpoint_00000004"], committed
    (checkpoints / "checkpoint_00000008").mkdir()
    (checkpoints / "checkpoint_00000008" / "model.pt").write_bytes(b"half a file")

    # The second `pipeline run` (in this process, on the session's Ray and Spark: the kill
    # had to be of a real process, the restart need not be) takes over the dead run's lock
    # and resumes training from the last committed checkpoint.
    assert main(["run", "--config", str(config)]) == 0
    result = json.loads((killed_root / "runs" / run_id / "train" / "transactions"
                         / "result.json").read_text())
    assert str(result["resumed_from"]).endswith("checkpoint_00000004"), result["resumed_from"]
    got = _final_metrics(paths)
    _assert_close(got[0], want[0])
    _assert_close(got[1], want[1])
