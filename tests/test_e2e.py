"""End to end: the whole default graph on tiny sample data, in local mode.

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
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import PipelineConfig, config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import run_pipeline
from pipeline.storage import Location, RunPaths, read_manifest
from pipeline.train.faults import FAULT_ENV

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "e2e"
TASKS = ("text", "images", "transactions")

#: small enough for CI, big enough that every stage has real work (and every split rows)
TINY: dict[str, Any] = {
    "run_id": RUN_ID,
    "synth": {"scale": 0.15, "seed": 5},
    "spark": {"shuffle_partitions": 2},
    "ray": {"num_cpus": 2},
    "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 1000,
              "log_every_steps": 100,
              "text": {"seq_len": 64, "d_model": 32, "n_layers": 1, "n_heads": 2,
                       "batch_size": 16},
              "images": {"image_size": 16, "channels": 8, "batch_size": 16},
              "transactions": {"hidden": 16, "batch_size": 64}},
    "evaluate": {"batch_size": 64, "num_samples": 1, "max_new_tokens": 8},
}


def _cfg(root: Path, settings: dict[str, Any], *overrides: str) -> PipelineConfig:
    return config_from_dict({**settings, "storage": {"root": f"file://{root}"}},
                            list(overrides))


def _states(outcomes: Any) -> dict[str, str]:
    return {o.name: o.state for o in outcomes}


@pytest.fixture(scope="module")
def whole_run(spark: Any, ray_local: Any, tmp_path_factory: pytest.TempPathFactory
              ) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("e2e")
    first = run_pipeline(_cfg(root, TINY), default_stages())
    return {"root": root, "first": first,
            "paths": RunPaths(Location(f"file://{root}"), RUN_ID)}


@pytest.mark.integration
def test_whole_graph_runs_every_stage_and_writes_the_reports(whole_run: dict[str, Any]
                                                             ) -> None:
    states = _states(whole_run["first"])
    expected = {"synth", *(f"{kind}/{t}" for kind in ("ingest", "dedup", "train", "evaluate")
                           for t in TASKS), "reports/dedup", "reports/summary"}
    assert set(states) == expected
    assert set(states.values()) == {"ran"}
    paths: RunPaths = whole_run["paths"]
    run = Path(paths.run.url.removeprefix("file://"))
    for name in ("reports/dedup/dedup.html", "reports/summary/index.html",
                 *(f"evaluate/{t}/report.html" for t in TASKS),
                 *(f"train/{t}/result.json" for t in TASKS)):
        assert (run / name).stat().st_size > 0, name
    # Every report `pipeline run` prints is a file of its stage, and the outcomes list them.
    reports = [u for o in whole_run["first"] for u in o.reports]
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
        whole_run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root: Path = whole_run["root"]
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "storage": {"root": f"file://{root}"}}))
    assert main(["run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out

    changed = run_pipeline(_cfg(root, TINY, "train.images.lr=0.005"), default_stages())
    ran = {name for name, state in _states(changed).items() if state == "ran"}
    assert ran == {"train/images", "evaluate/images", "reports/summary"}
    # The old model's checkpoints are kept aside, not resumed with the new settings.
    checkpoints = root / "runs" / RUN_ID / "checkpoints"
    assert [p.name.split("-")[0] for p in (checkpoints / "superseded").iterdir()] == [
        "train_images"]


# --- a killed `pipeline run` resumes from its checkpoint ---------------------------------

#: the whole run's settings, training only transactions (the fastest task), with a
#: checkpoint every 4 of its ~16 steps so that the kill lands mid-training with committed
#: checkpoints behind it (checkpoint frequency does not change what is trained)
RESUME: dict[str, Any] = {
    **TINY,
    "train": {**TINY["train"], "checkpoint_every_steps": 4,
              "text": {**TINY["train"]["text"], "enabled": False},
              "images": {**TINY["train"]["images"], "enabled": False}},
}
HANG_STEP = 6


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
        whole_run: dict[str, Any], tmp_path: Path) -> None:
    # The uninterrupted reference is the whole run's transactions model (same data, same
    # training settings); the killed run starts from copies of its data stages (same
    # manifests and cache keys), so it spends its time where the test is, in training.
    want = _final_metrics(whole_run["paths"])
    killed_root = tmp_path / "killed"
    for stage in ("synth", "ingest", "dedup", "reports/dedup"):
        shutil.copytree(whole_run["root"] / "runs" / RUN_ID / stage,
                        killed_root / "runs" / RUN_ID / stage)
    config = tmp_path / "resume.yaml"
    config.write_text(yaml.safe_dump({**RESUME, "storage": {"root": f"file://{killed_root}"}}))
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

    paths = RunPaths(Location(f"file://{killed_root}"), RUN_ID)
    state = paths.run_json.read_json()
    assert state["stages"].get("dedup/transactions", {}).get("state") != "running"
    assert state["stages"]["train/transactions"]["state"] == "running"  # killed mid-stage
    assert "evaluate/transactions" not in state["stages"]

    # Killed after step HANG_STEP: the last committed checkpoint is that of step 4,
    # mid-epoch. A newer folder without checkpoint.json (a save cut short) is not one.
    checkpoints = killed_root / "runs" / RUN_ID / "checkpoints" / "train_transactions"
    committed = sorted(p.name for p in checkpoints.iterdir()
                       if (p / "checkpoint.json").is_file())
    assert committed == ["checkpoint_00000004"], committed
    (checkpoints / "checkpoint_00000008").mkdir()
    (checkpoints / "checkpoint_00000008" / "model.pt").write_bytes(b"half a file")

    # The second `pipeline run` (in this process, on the session's Ray and Spark: the kill
    # had to be of a real process, the restart need not be) takes over the dead run's lock
    # and resumes training from the last committed checkpoint.
    assert main(["run", "--config", str(config)]) == 0
    result = json.loads((killed_root / "runs" / RUN_ID / "train" / "transactions"
                         / "result.json").read_text())
    assert str(result["resumed_from"]).endswith("checkpoint_00000004"), result["resumed_from"]
    got = _final_metrics(paths)
    _assert_close(got[0], want[0])
    _assert_close(got[1], want[1])
