"""Recovery: a worker dies mid-epoch and the run ends with the weights of an uninterrupted
run; checkpoints of other data are refused; a finished run is not retrained. (A killed
driver, `pipeline run` itself, resuming from its checkpoint: tests/test_e2e.py.)"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.storage import Location, RunPaths
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import publish_split_table
from pipeline.train.loop import FaultSpec
from pipeline.train.tasks.transactions import synthetic_transactions
from pipeline.train.trainer import TrainResult, checkpoint_root, train_task

REPO = Path(__file__).resolve().parents[2]
TASK = "transactions"
# 2 workers x 20 batches of 32 per epoch, 2 micro-batches per step: 10 steps an epoch,
# 20 in all; checkpoints at steps 4, 8, 10 (epoch end), 12, 16 and 20.
SETTINGS: dict[str, Any] = {
    "ray": {"num_cpus": 2},
    "train": {"epochs": 2, "seed": 3, "warmup_steps": 3, "grad_accum_steps": 2,
              "checkpoint_every_steps": 4, "log_every_steps": 5, "keep_best": 2,
              "max_failures": 2, "scaling": {"num_workers": 2},
              "transactions": {"batch_size": 32, "hidden": 16, "lr": 5e-3}},
}


def _cfg(root: Path) -> PipelineConfig:
    return config_from_dict({**SETTINGS, "storage": {"root": f"file://{root}"}})


def _setup(root: Path, run_id: str) -> tuple[PipelineConfig, RunPaths, Location]:
    run = RunPaths(Location(f"file://{root}"), run_id)
    stage = run.stage(f"dedup/{TASK}")
    publish_split_table(stage, synthetic_transactions(1600, seed=4, fraud_rate=0.2))
    return _cfg(root), run, stage


def _weights(url: str | None) -> dict[str, torch.Tensor]:
    assert url is not None
    fs, path = Location(url).filesystem()
    return ckpt.load_model_state(fs, path)


def _assert_same_run(got: TrainResult, want: TrainResult) -> None:
    a, b = _weights(got.latest_checkpoint), _weights(want.latest_checkpoint)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)
    assert got.final_metrics["step"] == want.final_metrics["step"] == 20
    for key in ("train_loss", "val_loss", "val_roc_auc"):
        assert got.final_metrics[key] == pytest.approx(want.final_metrics[key], rel=1e-5)
    assert [h["val_loss"] for h in got.history] == pytest.approx(
        [h["val_loss"] for h in want.history], rel=1e-5)


@pytest.fixture(scope="module")
def reference(ray_local: Any, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The uninterrupted run every recovered run must reproduce."""
    cfg, run, stage = _setup(tmp_path_factory.mktemp("reference"), "reference")
    result = train_task(cfg, TASK, stage, run)
    assert result.resumed_from is None and len(result.history) == 2
    return result


@pytest.mark.chaos
def test_worker_killed_mid_epoch_resumes_to_the_same_weights(
        reference: TrainResult, tmp_path: Path) -> None:
    cfg, run, stage = _setup(tmp_path, "worker-crash")
    marker = tmp_path / "fault-fired"
    # Rank 1's process exits after step 6: mid-epoch, two steps after the last checkpoint.
    result = train_task(cfg, TASK, stage, run, fault=FaultSpec("exit", 6, str(marker), 1))
    assert marker.exists(), "the injected fault never fired"
    _assert_same_run(result, reference)


@pytest.mark.integration
def test_checkpoint_of_other_data_refuses_to_resume(ray_local: Any, tmp_path: Path) -> None:
    cfg, run, stage = _setup(tmp_path, "other-data")
    root = checkpoint_root(run, TASK).path
    foreign = ckpt.CheckpointMeta(task=TASK, step=4, epoch=0, batch_in_epoch=8,
                                  world_size=2, config_digest="c" * 64, data_digest="0" * 64)
    ckpt.write_checkpoint(Path(root) / "checkpoint_00000004", {}, {}, foreign)
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        train_task(cfg, TASK, stage, run)
    message = str(info.value)
    assert "0" * 64 in message and "refusing to resume" in message
    from pipeline.storage import read_manifest

    assert read_manifest(stage).content_digest in message


@pytest.mark.integration
def test_finished_run_is_not_retrained_and_unfinished_folders_are_ignored(
        reference: TrainResult, tmp_path: Path) -> None:
    # The same run again: its data stage and checkpoints, under another root. (Copied, not
    # republished: a manifest records the code version, which other edits may change.)
    ref_run = Path(Location(reference.latest_checkpoint or "").path).parents[2]
    shutil.copytree(ref_run, tmp_path / "runs" / "again")
    cfg = _cfg(tmp_path)
    run = RunPaths(Location(f"file://{tmp_path}"), "again")
    stage = run.stage(f"dedup/{TASK}")
    root = checkpoint_root(run, TASK).path
    (Path(root) / "checkpoint_00000099").mkdir()  # a newer folder, never completed
    started = time.perf_counter()
    result = train_task(cfg, TASK, stage, run)
    assert result.fit_seconds == 0.0 and time.perf_counter() - started < 60
    assert result.latest_checkpoint is not None
    assert result.latest_checkpoint.endswith("checkpoint_00000020")
    assert result.history == reference.history
