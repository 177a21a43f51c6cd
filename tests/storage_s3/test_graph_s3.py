"""The whole default graph with `storage.root` and the raw inputs on S3 (moto on
127.0.0.1), the endpoint given only in `storage.options`. Spark's own readers cannot open
s3:// here (no hadoop-aws), so this passes only if every file goes through the storage
handle's fsspec filesystem, in the driver and in the executors: no object goes anywhere
else, and every object a stage leaves is listed by its manifest.

Every modality's Spark stages (ingest, dedup, the dedup report) run on S3; one modality
(transactions, the fastest to train) also takes training, checkpoints and evaluation
there. tests/test_e2e.py runs the whole three-modality graph locally."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.config import config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import run_pipeline
from pipeline.storage import MANIFEST_NAME, RunPaths, published_files, read_manifest
from pipeline.synth import generate

pytestmark = pytest.mark.integration
RUN_ID = "s3graph"
MODALITIES = ("text", "images", "transactions")

#: not stage outputs: run state, the lock, job specs and Ray Train's checkpoint tree
_RUN_LEVEL = ("run.json", "_LOCK", "_jobs/", "checkpoints/")


def test_whole_graph_on_s3_writes_only_there_and_manifests_list_everything(
        s3_bucket: Any, s3_ray: Any, spark: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The endpoint is in the config only: without it, a write would go to AWS itself
    # (unreachable here) instead of failing silently into a local folder.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    # Configured input paths: transactions need a real tokenization key.
    monkeypatch.setenv("PIPELINE_HMAC_KEY", "s3-test-hmac-key-0123456789abcdef")
    gt = generate(tmp_path / "raw", scale=0.05, seed=3, modalities=MODALITIES)
    s3_bucket.fs.put(str(tmp_path / "raw") + "/", s3_bucket.url("raw"), recursive=True)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a relative default (file://./data) would land here
    cfg = config_from_dict({
        "run_id": RUN_ID, "modalities": list(MODALITIES),
        "storage": {"root": s3_bucket.url("pipeline"), "options": s3_bucket.options},
        "inputs": {m: {"paths": [s3_bucket.url("raw", m)]} for m in MODALITIES},
        "spark": {"shuffle_partitions": 2}, "ray": {"num_cpus": 2},
        "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 1000,
                  # local mode: the loop writes the checkpoints to S3 itself (Ray Train's
                  # S3 storage with a worker: test_train_s3.py)
                  "log_every_steps": 100, "scaling": {"num_workers": 0},
                  "text": {"enabled": False}, "images": {"enabled": False},
                  "transactions": {"hidden": 8, "batch_size": 64}},
        "evaluate": {"batch_size": 128}})
    stages = default_stages()
    outcomes = run_pipeline(cfg, stages)
    ran = {o.name for o in outcomes if o.state == "ran"}
    assert ran == {*(f"{kind}/{m}" for kind in ("ingest", "dedup") for m in MODALITIES),
                   "reports/dedup", "train/transactions", "evaluate/transactions",
                   "reports/summary"}, [(o.name, o.state) for o in outcomes]
    # synth: every modality has configured inputs; text and images are not trained
    assert {o.state for o in outcomes if o.name not in ran} == {"skipped"}
    assert list(workdir.iterdir()) == []

    run = RunPaths(cfg.storage.location, RUN_ID)
    for m in MODALITIES:
        ingest = read_manifest(run.stage(f"ingest/{m}"))
        dedup = read_manifest(run.stage(f"dedup/{m}"))
        assert ingest.row_counts["input"] == gt.n_records[m]
        assert ingest.row_counts["quarantined"] == gt.n_bad[m]
        assert ingest.row_counts["curated"] == (dedup.row_counts["kept"]
                                                + dedup.row_counts["duplicates"]
                                                + dedup.row_counts["quarantined"])
        # Lineage names the raw objects on S3, as listed and as recorded for `lineage`.
        raw_prefix = s3_bucket.url("raw", m) + "/"
        assert {f["url"][:len(raw_prefix)] for f in ingest.extra["raw_files"]} == {raw_prefix}
        (first, *_) = published_files(run.stage(f"dedup/{m}"), "data/", ".parquet")
        with first.open() as fh:
            sources = pq.read_table(fh, columns=["source"]).column("source").to_pylist()
        assert sources and all(s.startswith(raw_prefix) for s in sources)
    assert read_manifest(run.stage("reports/dedup")).row_counts == {
        f"{m}.kept": read_manifest(run.stage(f"dedup/{m}")).row_counts["kept"]
        for m in MODALITIES}
    assert read_manifest(run.stage("evaluate/transactions")).extra["metrics"]["rows"] > 0

    # Every object a stage left is listed by its manifest: nothing half-written, no Spark
    # or Hadoop side files, nothing outside the stages but the run-level state.
    prefix = run.run.path.rstrip("/") + "/"
    in_bucket: list[str] = s3_bucket.keys()
    keys = [k for k in in_bucket if k.startswith(prefix)]
    assert keys, "nothing was written to the bucket"
    listed: set[str] = set()
    for stage in (s for s in stages if s.name in ran):
        manifest = read_manifest(run.stage(stage.name))
        assert manifest.files, f"{stage.name} published no files"
        base = prefix + stage.name + "/"
        files = {base + f.path for f in manifest.files} | {base + MANIFEST_NAME}
        assert {k for k in keys if k.startswith(base)} == files, stage.name
        listed |= files
    stray = [k for k in keys if k not in listed and not k[len(prefix):].startswith(_RUN_LEVEL)]
    assert stray == [], f"objects outside any manifest: {stray[:10]}"
    assert not any("/_staging/" in k for k in keys)
    assert any(k.startswith(prefix + "checkpoints/") for k in keys)
    assert s3_bucket.objects_with_secrets() == []
    assert "AWS_SECRET_ACCESS_KEY" in os.environ  # credentials came from the environment
