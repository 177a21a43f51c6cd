"""Ray Data reads and Ray Train runs with storage.root on s3:// (moto on 127.0.0.1).

The credentials reach the Ray workers through the environment only (see conftest.py);
every object the run leaves in the bucket is scanned for them afterwards."""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc
import pytest
import torch

from pipeline.config import config_from_dict, to_dict
from pipeline.storage import RunPaths, filesystem, read_json, write_json_atomic
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import publish_split_table, read_split
from pipeline.train.tasks.transactions import synthetic_transactions
from pipeline.train.trainer import checkpoint_root, train_task

pytestmark = pytest.mark.integration
TASK = "transactions"


def test_read_split_through_ray_data_from_s3(s3_ray: Any, s3_bucket: Any) -> None:
    stage = s3_bucket.url("runs", "read", "dedup", TASK)
    table = synthetic_transactions(300, seed=2)
    publish_split_table(stage, table, n_files=3, options=s3_bucket.options)
    got = read_split(stage, "train", ["txn_id", "amount"], seed=5,
                     options=s3_bucket.options).to_arrow_refs()
    rows = s3_ray.get(got)
    ids = sorted(i for part in rows for i in part.column("txn_id").to_pylist())
    want = table.filter(pc.equal(table.column("split"), "train")).column("txn_id").to_pylist()
    assert ids == sorted(want) and len(ids) > 100
    assert all(set(part.column_names) == {"txn_id", "amount", "_order"} for part in rows)


def test_train_task_checkpoints_on_s3_and_resumes(s3_ray: Any, s3_bucket: Any) -> None:
    cfg = config_from_dict({
        "ray": {"num_cpus": 2},
        "storage": {"root": s3_bucket.url("pipeline"), "options": s3_bucket.options},
        "train": {"epochs": 1, "seed": 0, "warmup_steps": 2, "checkpoint_every_steps": 4,
                  "log_every_steps": 100, "keep_best": 2, "scaling": {"num_workers": 1},
                  "transactions": {"batch_size": 64, "hidden": 16, "lr": 5e-3}}})
    run = RunPaths(cfg.storage.root, "s3run")
    stage = run.stage(f"dedup/{TASK}")
    publish_split_table(stage, synthetic_transactions(600, seed=1, fraud_rate=0.2),
                        options=s3_bucket.options)
    # What the runner records as run.json: the resolved config, secrets redacted.
    write_json_atomic(run.run_json, {"config": to_dict(cfg, redact=True)}, cfg.storage.options)

    first = train_task(cfg, TASK, stage, run)
    prefix = f"{checkpoint_root(run, TASK)}/checkpoint_"
    assert first.resumed_from is None and len(first.history) == 1 and first.fit_seconds > 0
    assert first.latest_checkpoint is not None and first.latest_checkpoint.startswith(prefix)
    assert first.best_checkpoint is not None and first.best_checkpoint.startswith(prefix)
    fs, root = filesystem(checkpoint_root(run, TASK), cfg.storage.options)
    fs.invalidate_cache()
    steps = [m.step for _, m in ckpt.list_checkpoints(fs, root)]
    assert steps and steps[-1] == first.final_metrics["step"] and len(steps) <= 2  # keep_best
    report = read_json(first.report_url, cfg.storage.options)
    assert report["latest_checkpoint"] == first.latest_checkpoint
    assert report["history"][0]["val_loss"] == pytest.approx(first.history[0]["val_loss"])

    # The same run again: the last checkpoint completed every epoch, nothing is trained.
    again = train_task(cfg, TASK, stage, run)
    assert again.resumed_from == first.latest_checkpoint and again.fit_seconds == 0.0
    assert again.history == first.history
    fs_w, path_w = filesystem(first.latest_checkpoint, cfg.storage.options)
    weights = ckpt.load_model_state(fs_w, path_w)
    assert weights and all(isinstance(t, torch.Tensor) for t in weights.values())

    # Credentials never land in an artifact, nor in the job's runtime_env.
    keys = s3_bucket.keys()
    assert any(k.endswith("/run.json") for k in keys)
    assert any(k.endswith(f"/{ckpt.META_FILE}") for k in keys)
    assert any(k.endswith(f"/reports/train_{TASK}.json") for k in keys)
    assert s3_bucket.objects_with_secrets() == []
    runtime_env = str(s3_ray.get_runtime_context().runtime_env)
    assert "AWS_SECRET_ACCESS_KEY" not in runtime_env
