"""Ray Data reads, Ray Train runs and the train stage's publication with storage.root on
s3:// (moto on 127.0.0.1).

The credentials reach the Ray workers through the environment only (see conftest.py);
every object the run leaves in the bucket is scanned for them afterwards."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
import pytest
import torch

from pipeline.config import config_from_dict
from pipeline.orchestrator import run_pipeline
from pipeline.storage import Location, RunPaths, read_manifest
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import publish_split_table, read_split
from pipeline.train.stage import read_train_result, train_stage
from pipeline.train.tasks.transactions import synthetic_transactions
from pipeline.train.trainer import checkpoint_root, train_task

pytestmark = pytest.mark.integration
MODALITY = "transactions"


def test_read_split_through_ray_data_from_s3(s3_ray: Any, s3_bucket: Any) -> None:
    stage = Location(s3_bucket.url("runs", "read", "dedup", MODALITY), s3_bucket.options)
    table = synthetic_transactions(300, seed=2)
    publish_split_table(stage, table, n_files=3)
    got = read_split(stage, "train", ["txn_id", "amount"], seed=5).to_arrow_refs()
    rows = s3_ray.get(got)
    ids = sorted(i for part in rows for i in part.column("txn_id").to_pylist())
    want = table.filter(pc.equal(table.column("split"), "train")).column("txn_id").to_pylist()
    assert ids == sorted(want) and len(ids) > 100
    assert all(set(part.column_names) == {"txn_id", "amount", "_order"} for part in rows)


def test_train_stage_checkpoints_on_s3_publishes_its_result_and_resumes(
        s3_ray: Any, s3_bucket: Any) -> None:
    cfg = config_from_dict({
        "run_id": "s3run", "ray": {"num_cpus": 2},
        "storage": {"root": s3_bucket.url("pipeline"), "options": s3_bucket.options},
        "train": {"epochs": 1, "seed": 0, "warmup_steps": 2, "checkpoint_every_steps": 4,
                  "log_every_steps": 100, "keep_best": 2, "scaling": {"num_workers": 1},
                  "transactions": {"batch_size": 64, "hidden": 16, "lr": 5e-3}}})
    run = RunPaths(cfg.storage.location, "s3run")
    stage = run.stage(f"dedup/{MODALITY}")
    publish_split_table(stage, synthetic_transactions(600, seed=1, fraud_rate=0.2))

    # The train stage through the runner: result.json is written into its staging folder
    # on S3 (the Location carries the endpoint) and published with the manifest.
    outcomes = run_pipeline(cfg, [train_stage(MODALITY)])
    assert [o.state for o in outcomes] == ["ran"]
    published = run.stage(f"train/{MODALITY}")
    manifest = read_manifest(published)
    assert [f.path for f in manifest.files] == ["result.json"]
    assert manifest.extra["report"] == (published / "result.json").url
    first = read_train_result(published)
    prefix = f"{checkpoint_root(run, MODALITY).url}/checkpoint_"
    assert first["resumed_from"] is None and len(first["history"]) == 1
    assert first["fit_seconds"] > 0 and first["latest_checkpoint"].startswith(prefix)
    assert first["best_checkpoint"] is not None and first["best_checkpoint"].startswith(prefix)
    fs, root = checkpoint_root(run, MODALITY).filesystem()
    fs.invalidate_cache()
    steps = [m.step for _, m in ckpt.list_checkpoints(fs, root)]
    assert steps and steps[-1] == first["final_metrics"]["step"] and len(steps) <= 2

    # The same run again: the last checkpoint completed every epoch, nothing is trained.
    again = train_task(cfg, MODALITY, stage, run)
    assert again.resumed_from == first["latest_checkpoint"] and again.fit_seconds == 0.0
    assert [dict(h) for h in again.history] == first["history"]
    fs_w, path_w = published.at(first["latest_checkpoint"]).filesystem()
    weights = ckpt.load_model_state(fs_w, path_w)
    assert weights and all(isinstance(t, torch.Tensor) for t in weights.values())

    # Credentials never land in an artifact, nor in the job's runtime_env.
    keys = s3_bucket.keys()
    assert any(k.endswith("/run.json") for k in keys)
    assert any(k.endswith(f"/{ckpt.META_FILE}") for k in keys)
    assert any(k.endswith(f"/train/{MODALITY}/result.json") for k in keys)
    assert not any("/reports/" in k for k in keys)  # nothing written beside the stage
    assert s3_bucket.objects_with_secrets() == []
    runtime_env = str(s3_ray.get_runtime_context().runtime_env)
    assert "AWS_SECRET_ACCESS_KEY" not in runtime_env
