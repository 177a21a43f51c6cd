"""Ray Train's local mode (`train.scaling.num_workers: 0`): the loop runs in the driver
process and must train, checkpoint, retain and resume exactly as one Ray Train worker."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.storage import MANIFEST_NAME, Location, RunPaths
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import publish_split_table
from pipeline.train.loop import FaultSpec, InjectedFault
from pipeline.train.tasks.transactions import synthetic_transactions
from pipeline.train.trainer import TrainResult, checkpoint_root, train_task

TASK = "transactions"
# 1,280 train rows in batches of 32, 2 micro-batches a step: 20 steps an epoch, 60 in all;
# checkpoints every 8 steps and at each epoch end, 2 kept besides the newest.
SETTINGS: dict[str, Any] = {
    "ray": {"num_cpus": 2},
    "train": {"epochs": 3, "seed": 7, "warmup_steps": 3, "grad_accum_steps": 2,
              "checkpoint_every_steps": 8, "log_every_steps": 10, "keep_best": 2,
              "transactions": {"batch_size": 32, "hidden": 16, "lr": 5e-3}},
}


def _train(root: Path, workers: int, fault: FaultSpec | None = None
           ) -> tuple[TrainResult, list[str]]:
    cfg: PipelineConfig = config_from_dict({
        **SETTINGS, "storage": {"root": f"file://{root}"},
        "train": {**SETTINGS["train"], "scaling": {"num_workers": workers}}})
    run = RunPaths(Location(f"file://{root}"), "local")
    stage = run.stage(f"dedup/{TASK}")
    if not stage.join(MANIFEST_NAME).exists():
        publish_split_table(stage, synthetic_transactions(1600, seed=4, fraud_rate=0.2))
    result = train_task(cfg, TASK, stage, run, fault=fault)
    fs, path = checkpoint_root(run, TASK).filesystem()
    kept = [p.rsplit("/", 1)[-1] for p, _ in ckpt.list_checkpoints(fs, path)]
    return result, kept


def _weights(url: str | None) -> dict[str, torch.Tensor]:
    assert url is not None
    fs, path = Location(url).filesystem()
    return ckpt.load_model_state(fs, path)


@pytest.fixture(scope="module")
def one_worker(ray_local: Any, tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[TrainResult, list[str]]:
    """The reference: the same training on one Ray Train worker."""
    return _train(tmp_path_factory.mktemp("one-worker"), workers=1)


def _learned(result: TrainResult) -> list[dict[str, float]]:
    """The history without wall-clock figures (which differ between any two runs)."""
    return [{k: v for k, v in h.items() if "seconds" not in k and not k.endswith("_per_s")}
            for h in result.history]


@pytest.mark.integration
def test_local_mode_trains_checkpoints_and_retains_like_one_worker(
        one_worker: tuple[TrainResult, list[str]], tmp_path: Path) -> None:
    reference, reference_kept = one_worker
    result, kept = _train(tmp_path, workers=0)
    assert result.fit_seconds > 0 and result.resumed_from is None
    assert _learned(result) == _learned(reference) and len(result.history) == 3
    a, b = _weights(result.best_checkpoint), _weights(reference.best_checkpoint)
    for name in b:
        assert torch.equal(a[name], b[name]), name
    assert result.best_val_loss == reference.best_val_loss
    # The folders Ray Train's CheckpointConfig(num_to_keep=2) kept, the loop kept too.
    assert kept == reference_kept and kept[-1] == "checkpoint_00000060"
    assert len(kept) <= 3


@pytest.mark.integration
def test_local_mode_fails_in_this_process_and_resumes_to_the_same_weights(
        one_worker: tuple[TrainResult, list[str]], tmp_path: Path) -> None:
    reference, _ = one_worker
    marker = tmp_path / "fault-fired"
    # Raised in this very process (no worker to restart), after step 26: mid-epoch 2, two
    # steps after the checkpoint at step 24.
    with pytest.raises(InjectedFault):
        _train(tmp_path, workers=0, fault=FaultSpec("raise", 26, str(marker), 0))
    assert marker.exists()
    result, _ = _train(tmp_path, workers=0)
    assert result.resumed_from is not None and result.resumed_from.endswith(
        "checkpoint_00000024")
    assert _learned(result) == _learned(reference)
    a, b = _weights(result.latest_checkpoint), _weights(reference.latest_checkpoint)
    for name in b:
        assert torch.equal(a[name], b[name]), name


def _meta(step: int, val_loss: float) -> ckpt.CheckpointMeta:
    return ckpt.CheckpointMeta(task=TASK, step=step, epoch=0, batch_in_epoch=0, world_size=1,
                               config_digest="c", data_digest="d",
                               metrics={"val_loss": val_loss})


@pytest.mark.unit
@pytest.mark.parametrize(("losses", "keep", "gone"), [
    ([3.0, 1.0, 2.0], 5, []),  # no more than kept
    ([3.0, 1.0, 2.0, 4.0], 2, [0]),  # the 2 best (steps 1, 2) and the newest (3)
    ([1.0, 2.0, 3.0, 0.5], 1, [0, 1, 2]),  # the newest is also the best
    ([1.0, math.nan, 2.0, 1e30, 2.0], 2, [1, 2, 3]),  # NaN ranks last; of equals the newer
    ([1e30, 1e30, 1e30], 2, [0]),  # placeholders only (mid-epoch): the two newest
])
def test_retention_matches_ray_trains_num_to_keep(losses: list[float], keep: int,
                                                  gone: list[int]) -> None:
    checkpoints = [(f"c{i}", _meta(i, v)) for i, v in enumerate(losses)]
    assert ckpt.retired(checkpoints, keep) == [f"c{i}" for i in gone]
