"""`pipeline run` with its Spark stages as spark-submit jobs on the standalone master and
its training as a Ray job on the two-node cluster gives the results of a local run with
the same settings (the session's sample run), and streams the jobs' logs; no secret
leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.ingest.tokens import DEV_HMAC_KEY
from pipeline.storage import Location, RunPaths, read_manifest

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.cluster.conftest import LocalCluster
    from tests.conftest import SampleRun

pytestmark = pytest.mark.cluster

SPARK_STAGES = ("ingest/transactions", "dedup/transactions")
RAY_STAGES = ("train/transactions", "evaluate/transactions")
#: every kind of job; the reports (one more spark-submit job, then local HTML) are not run
SELECTED = (*SPARK_STAGES, *RAY_STAGES)
#: what an ingest of configured input paths adds to its manifest's extra
RAW_PROVENANCE = ("raw_files", "raw_digest", "raw_file_count")


def _cluster_config(sample: SampleRun, root: Path, cluster: LocalCluster) -> dict[str, Any]:
    """The sample run's settings (the local-mode reference: the session's sample run), its
    transactions read from the sample run's synth folder, every stage a cluster job."""
    settings = sample.config_dict(root)
    return {
        **settings, "modalities": ["transactions"],
        "inputs": {"transactions": {"paths": [str(sample.run_dir / "synth/transactions")]}},
        "spark": {**settings["spark"], "backend": "spark-submit",
                  "submit_master": cluster.spark_master,
                  "submit_args": ["--conf", "spark.driver.host=127.0.0.1",
                                  "--conf", "spark.executor.memory=512m",
                                  "--conf", "spark.ui.enabled=false"]},
        "ray": {**settings["ray"], "backend": "job", "job_address": cluster.ray_dashboard,
                "job_python": sys.executable},
        # on the cluster: one training worker per node (placement changes no result)
        "train": {**settings["train"], "max_failures": 0,
                  "scaling": {**settings["train"]["scaling"],
                              "placement_strategy": "STRICT_SPREAD"}},
    }


def _pipeline_run(tmp_path: Path, name: str, config: dict[str, Any],
                  env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    only = [arg for stage in SELECTED for arg in ("--only", stage)]
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config",
                             str(path), *only], capture_output=True, text=True, env=env,
                            timeout=420, check=False, cwd=tmp_path)
    assert result.returncode == 0, f"{name} run failed:\n{(result.stdout + result.stderr)[-4000:]}"
    return result


def _learned(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics the model determines (losses, scores), without the timings."""
    timing = [k for k in metrics if "seconds" in k or k.endswith("_per_s")]
    kept = {k: v for k, v in metrics.items() if k not in timing}
    assert "val_loss" in kept and "train_loss" in kept, sorted(metrics)
    return kept


def _final_weights(train_stage: Location) -> dict[str, Any]:
    import torch

    best = (train_stage / "result.json").read_json()["best_checkpoint"]
    path = best[len("file://"):] if best.startswith("file://") else best
    return dict(torch.load(Path(path) / "model.pt", map_location="cpu", weights_only=True))


@pytest.mark.timeout(900)
def test_cluster_backends_match_local_mode(local_cluster: LocalCluster, sample_run: SampleRun,
                                           tmp_path: Path) -> None:
    # The same key as the sample run's (its synth input falls back to the development
    # key); configured input paths need it set explicitly. Passed to the jobs, never shown.
    key = DEV_HMAC_KEY.decode()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS",)}
    env.update(PIPELINE_HMAC_KEY=key, SPARK_LOCAL_IP="127.0.0.1", PYTHONHASHSEED="0",
               RAY_USAGE_STATS_ENABLED="0", COLUMNS="250",
               PIPELINE_CACHE_DIR=str(tmp_path / "bundles"), RAY_AUTH_TOKEN=local_cluster.token)
    result = _pipeline_run(tmp_path, "cluster",
                           _cluster_config(sample_run, tmp_path / "cluster", local_cluster), env)
    out = result.stdout + result.stderr
    run_dir = tmp_path / "cluster/runs" / sample_run.run_id
    ours = RunPaths(Location(f"file://{tmp_path}/cluster"), sample_run.run_id)
    local = sample_run.paths  # the local-mode reference: the session's sample run

    for stage in SPARK_STAGES:  # the same files, byte for byte, and the same figures
        got, ref = read_manifest(ours.stage(stage)), read_manifest(local.stage(stage))
        assert got.content_digest == ref.content_digest, stage
        assert [(f.path, f.sha256) for f in got.files] == [(f.path, f.sha256)
                                                            for f in ref.files], stage
        assert got.row_counts == ref.row_counts, stage
        # Configured input paths (not the synth stage's folder) are recorded file by file.
        provenance = {k: got.extra.pop(k) for k in RAW_PROVENANCE if k in got.extra}
        assert got.extra == ref.extra, stage
        if stage.startswith("ingest/"):
            assert [f["url"].rsplit("/synth/", 1)[1] for f in provenance["raw_files"]] == \
                ["transactions/part-000.csv", "transactions/part-001.csv",
                 "transactions/part-002.jsonl"]
    # A spec and a result per job: ingest and dedup on Spark, train and evaluate on Ray.
    jobs = run_dir / "_jobs"
    assert sorted(str(p.parent.relative_to(jobs)) for p in jobs.rglob("*.spec.json")) == \
        sorted(SELECTED)
    assert len(list(jobs.rglob("*.json"))) == 2 * len(SELECTED)
    trained = read_manifest(ours.stage("train/transactions"))
    reference = read_manifest(local.stage("train/transactions"))
    assert _learned(trained.extra["final_metrics"]) == _learned(reference.extra["final_metrics"])
    assert trained.extra["best_val_loss"] == reference.extra["best_val_loss"]
    assert read_manifest(ours.stage("evaluate/transactions")).extra["metrics"] == \
        read_manifest(local.stage("evaluate/transactions")).extra["metrics"]
    ours_w = _final_weights(ours.stage("train/transactions"))
    ref_w = _final_weights(local.stage("train/transactions"))
    import torch

    assert ours_w.keys() == ref_w.keys()
    for name in ref_w:
        assert torch.equal(ours_w[name], ref_w[name]), name

    # The jobs really ran there, and their logs were streamed into ours, with numbers.
    assert f"starting on master {local_cluster.spark_master}" in out
    assert "[spark-submit dedup/transactions" in out
    assert f"[ray job pipeline-{sample_run.run_id}-train-transactions-" in out
    assert "training on 2 CPU worker(s)" in out
    assert "joined the Ray cluster of this job" in out
    # The master ran the stages as applications, the package shipped with --py-files.
    done = json.loads(urllib.request.urlopen(f"{local_cluster.spark_ui}/json/",
                                             timeout=10).read())["completedapps"]
    names = [app["name"] for app in done]
    assert sum(n in ("pipeline", "pipeline-stage") for n in names) >= len(SPARK_STAGES), names
    # No secret anywhere: not in our log, the job specs and results, manifests, run.json.
    texts = [out] + [p.read_text(errors="replace") for p in run_dir.rglob("*.json")]
    for text in texts:
        assert key not in text and local_cluster.token not in text
