"""The Spark stages (ingest, dedup, dedup report) on s3:// (moto on 127.0.0.1), with raw
inputs on S3 too and the endpoint given only in `storage.options`: Spark's own readers
cannot open s3:// here (no hadoop-aws), so this passes only if every file goes through
the storage handle's fsspec filesystem in the executors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.config import config_from_dict
from pipeline.dedup.stage import dedup_report_stage, dedup_stage
from pipeline.ingest.stage import ingest_stage
from pipeline.orchestrator import run_pipeline
from pipeline.orchestrator.stages import synth_stage
from pipeline.storage import MANIFEST_NAME, RunPaths, published_files, read_manifest
from pipeline.synth import generate

pytestmark = pytest.mark.integration
MODALITIES = ("text", "images", "transactions")


def test_ingest_and_dedup_read_and_write_s3_through_storage_options(
        s3_bucket: Any, spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    # Configured input paths: transactions need a real tokenization key.
    monkeypatch.setenv("PIPELINE_HMAC_KEY", "s3-test-hmac-key-0123456789abcdef")
    gt = generate(tmp_path / "raw", scale=0.05, seed=3, modalities=MODALITIES)
    s3_bucket.fs.put(str(tmp_path / "raw") + "/", s3_bucket.url("raw"), recursive=True)
    cfg = config_from_dict({
        "run_id": "s3", "modalities": list(MODALITIES),
        "storage": {"root": s3_bucket.url("store"), "options": s3_bucket.options},
        "inputs": {m: {"paths": [s3_bucket.url("raw", m)]} for m in MODALITIES},
        "spark": {"shuffle_partitions": 2}})
    stages = [synth_stage(), *(ingest_stage(m) for m in MODALITIES),
              *(dedup_stage(m) for m in MODALITIES), dedup_report_stage()]
    outcomes = {o.name: o.state for o in run_pipeline(cfg, stages)}
    assert outcomes.pop("synth") != "ran"  # every modality has configured inputs
    assert set(outcomes.values()) == {"ran"}, outcomes

    run = RunPaths(cfg.storage.location, "s3")
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

    # Every object a stage left is listed by its manifest (nothing half-written, no
    # Spark or Hadoop side files).
    prefix = run.run.path.rstrip("/") + "/"
    keys = s3_bucket.keys()
    for name in [s.name for s in stages if s.name != "synth"]:
        base = prefix + name + "/"
        listed = {base + f.path for f in read_manifest(run.stage(name)).files}
        found = {k for k in keys if k.startswith(base)}
        assert found == listed | {base + MANIFEST_NAME}, name
    assert not any("/_staging/" in k for k in keys)
