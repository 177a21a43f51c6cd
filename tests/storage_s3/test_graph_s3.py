"""The whole default graph with `storage.root` on S3 (moto on 127.0.0.1), the endpoint
given only in `storage.options`: every stage reads and writes through the storage handle,
so no object goes anywhere else, and every object a stage leaves is listed by its
manifest.

One modality (transactions, the fastest to train) takes every kind of stage through the
graph; test_ingest_dedup_s3 reads and writes every modality's Spark stages on S3, and
test_e2e runs the whole three-modality graph locally."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import run_pipeline
from pipeline.storage import MANIFEST_NAME, RunPaths, read_manifest

pytestmark = pytest.mark.integration
RUN_ID = "s3graph"

#: not stage outputs: run state, the lock, job specs and Ray Train's checkpoint tree
_RUN_LEVEL = ("run.json", "_LOCK", "_jobs/", "checkpoints/")


def test_whole_graph_on_s3_writes_only_there_and_manifests_list_everything(
        s3_bucket: Any, s3_ray: Any, spark: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The endpoint is in the config only: without it, a write would go to AWS itself
    # (unreachable here) instead of failing silently into a local folder.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a relative default (file://./data) would land here
    cfg = config_from_dict({
        "run_id": RUN_ID, "synth": {"scale": 0.15, "seed": 5},
        "modalities": ["transactions"],
        "storage": {"root": s3_bucket.url("pipeline"), "options": s3_bucket.options},
        "spark": {"shuffle_partitions": 2}, "ray": {"num_cpus": 2},
        "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 1000,
                  "log_every_steps": 100,
                  "text": {"seq_len": 32, "d_model": 16, "n_layers": 1, "n_heads": 2,
                           "batch_size": 32},
                  "images": {"image_size": 16, "channels": 4, "batch_size": 32},
                  "transactions": {"hidden": 8, "batch_size": 128}},
        "evaluate": {"batch_size": 128, "num_samples": 1, "max_new_tokens": 4}})
    stages = default_stages()
    outcomes = run_pipeline(cfg, stages)
    ran = {o.name for o in outcomes if o.state == "ran"}
    assert ran == {"synth", "ingest/transactions", "dedup/transactions", "reports/dedup",
                   "train/transactions", "evaluate/transactions", "reports/summary"}, [
        (o.name, o.state) for o in outcomes]
    assert {o.state for o in outcomes if o.name not in ran} == {"skipped"}

    assert list(workdir.iterdir()) == []
    run = RunPaths(cfg.storage.location, RUN_ID)
    prefix = run.run.path.rstrip("/") + "/"
    in_bucket: list[str] = s3_bucket.keys()
    keys = [k for k in in_bucket if k.startswith(prefix)]
    assert keys, "nothing was written to the bucket"
    listed: set[str] = set()
    for stage in (s for s in stages if s.name in ran):
        manifest = read_manifest(run.stage(stage.name))
        assert manifest.files, f"{stage.name} published no files"
        base = prefix + stage.name + "/"
        listed |= {base + f.path for f in manifest.files} | {base + MANIFEST_NAME}
    stray = [k for k in keys if k not in listed and not k[len(prefix):].startswith(_RUN_LEVEL)]
    assert stray == [], f"objects outside any manifest: {stray[:10]}"
    assert any(k.startswith(prefix + "checkpoints/") for k in keys)
    assert s3_bucket.objects_with_secrets() == []
    assert "AWS_SECRET_ACCESS_KEY" in os.environ  # credentials came from the environment
