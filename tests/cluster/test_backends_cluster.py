"""`pipeline run` with its Spark stages as spark-submit jobs on the standalone master and
its training as a Ray job on the two-node cluster gives the results of a local run with
the same seed and worker count, and streams the jobs' logs; no secret leaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.config import config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import run_pipeline
from pipeline.storage import Location, read_manifest

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.cluster.conftest import LocalCluster

pytestmark = pytest.mark.cluster

FAKE_KEY = "fake-hmac-key-cluster-73b1e9"
SPARK_STAGES = ("ingest/transactions", "dedup/transactions")
RAY_STAGES = ("train/transactions", "evaluate/transactions")
#: every kind of job; the reports (one more spark-submit job, then local HTML) are not run
SELECTED = (*SPARK_STAGES, *RAY_STAGES)
#: the cluster run's limit (it took 200-440 s on a quiet 2-core machine)
RUN_TIMEOUT_S = 720


def _config(root: Path, raw: Path, **backends: Any) -> dict[str, Any]:
    return {
        "run_id": "c", "storage": {"root": f"file://{root}"}, "modalities": ["transactions"],
        "inputs": {"transactions": {"paths": [str(raw)]}},
        "spark": {"shuffle_partitions": 2, **backends.get("spark", {})},
        "ray": {"num_cpus": 4, **backends.get("ray", {})},
        "train": {"epochs": 1, "seed": 0, "warmup_steps": 2, "checkpoint_every_steps": 1000,
                  "log_every_steps": 2, "max_failures": 0,
                  "scaling": {"num_workers": 2, "use_gpu": "no", "cpus_per_worker": 1,
                              # on the cluster: one training worker per node
                              "placement_strategy": backends.get("placement", "PACK")},
                  "transactions": {"hidden": 16, "batch_size": 128}},
    }


def _pipeline_run(run_interruptible: Any, tmp_path: Path, name: str, config: dict[str, Any],
                  env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    only = [arg for stage in SELECTED for arg in ("--only", stage)]
    # Past its time the run gets Ctrl-C, so it stops its jobs on the shared cluster.
    result = run_interruptible([sys.executable, "-m", "pipeline.cli", "run", "--config",
                                str(path), *only], RUN_TIMEOUT_S, env=env, cwd=tmp_path)
    assert result.returncode == 0, f"{name} run failed:\n{result.stdout[-4000:]}"
    return result


def _learned(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics the model determines (losses, scores), without the timings."""
    timing = [k for k in metrics if "seconds" in k or k.endswith("_per_s")]
    kept = {k: v for k, v in metrics.items() if k not in timing}
    assert "val_loss" in kept and "train_loss" in kept, sorted(metrics)
    return kept


def _final_weights(root: Path) -> dict[str, Any]:
    import torch

    result = Location(f"file://{root}/runs/c/train/transactions/result.json").read_json()
    best = result["best_checkpoint"]
    path = best[len("file://"):] if best.startswith("file://") else best
    return dict(torch.load(Path(path) / "model.pt", map_location="cpu", weights_only=True))


# The test's own time only: starting the cluster and the session's Spark and Ray is the
# fixtures' cost, not this test's.
@pytest.mark.timeout(RUN_TIMEOUT_S + 300, func_only=True)
def test_cluster_backends_match_local_mode(local_cluster: LocalCluster, spark: Any,
                                           ray_local: Any, run_interruptible: Any,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.synth import generate

    raw = tmp_path / "raw"
    generate(str(raw), scale=0.05, seed=0, modalities=["transactions"])
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("RAY_AUTH") and k not in ("RAY_ADDRESS",)}
    base.update(PIPELINE_HMAC_KEY=FAKE_KEY, SPARK_LOCAL_IP="127.0.0.1",
                PYTHONHASHSEED="0", RAY_USAGE_STATS_ENABLED="0", COLUMNS="250",
                PIPELINE_CACHE_DIR=str(tmp_path / "bundles"))
    # The local-mode reference runs in this process, on the session's Spark and Ray.
    monkeypatch.setenv("PIPELINE_HMAC_KEY", FAKE_KEY)
    run_pipeline(config_from_dict(_config(tmp_path / "local", raw / "transactions")),
                 default_stages(), selected=SELECTED)

    cluster_cfg = _config(tmp_path / "cluster", raw / "transactions", spark={
        "backend": "spark-submit", "submit_master": local_cluster.spark_master,
        "submit_args": ["--conf", "spark.driver.host=127.0.0.1",
                        "--conf", "spark.executor.memory=512m",
                        "--conf", "spark.ui.enabled=false"]},
        ray={"backend": "job", "job_address": local_cluster.ray_dashboard,
             "job_python": sys.executable}, placement="STRICT_SPREAD")
    env = {**base, "RAY_AUTH_TOKEN": local_cluster.token}
    result = _pipeline_run(run_interruptible, tmp_path, "cluster", cluster_cfg, env)
    out = result.stdout  # stderr merged into it

    for stage in SPARK_STAGES:  # the same files, byte for byte, and the same figures
        ours = read_manifest(Location(f"file://{tmp_path}/cluster/runs/c/{stage}"))
        ref = read_manifest(Location(f"file://{tmp_path}/local/runs/c/{stage}"))
        assert ours.content_digest == ref.content_digest, stage
        assert [(f.path, f.sha256) for f in ours.files] == [(f.path, f.sha256)
                                                             for f in ref.files], stage
        assert ours.row_counts == ref.row_counts and ours.extra == ref.extra, stage
    # A spec and a result per job: ingest and dedup on Spark, train and evaluate on Ray.
    jobs = (tmp_path / "cluster/runs/c/_jobs")
    assert sorted(str(p.parent.relative_to(jobs)) for p in jobs.rglob("*.spec.json")) == \
        sorted(SELECTED)
    assert len(list(jobs.rglob("*.json"))) == 2 * len(SELECTED)
    trained = read_manifest(Location(f"file://{tmp_path}/cluster/runs/c/train/transactions"))
    reference = read_manifest(Location(f"file://{tmp_path}/local/runs/c/train/transactions"))
    assert _learned(trained.extra["final_metrics"]) == _learned(reference.extra["final_metrics"])
    assert trained.extra["best_val_loss"] == reference.extra["best_val_loss"]
    evaluated = read_manifest(Location(f"file://{tmp_path}/cluster/runs/c/evaluate/transactions"))
    assert evaluated.extra["metrics"] == read_manifest(
        Location(f"file://{tmp_path}/local/runs/c/evaluate/transactions")).extra["metrics"]
    ours_w, ref_w = _final_weights(tmp_path / "cluster"), _final_weights(tmp_path / "local")
    import torch

    assert ours_w.keys() == ref_w.keys()
    for name in ref_w:
        assert torch.equal(ours_w[name], ref_w[name]), name

    # The jobs really ran there, and their logs were streamed into ours, with numbers.
    assert f"starting on master {local_cluster.spark_master}" in out
    assert "[spark-submit dedup/transactions" in out
    assert "[ray job pipeline-c-train-transactions-" in out
    assert "training on 2 CPU worker(s)" in out
    assert "joined the Ray cluster of this job" in out
    # The master ran the stages as applications, the package shipped with --py-files.
    done = json.loads(urllib.request.urlopen(f"{local_cluster.spark_ui}/json/",
                                             timeout=10).read())["completedapps"]
    names = [app["name"] for app in done]
    assert sum(n in ("pipeline", "pipeline-stage") for n in names) >= len(SPARK_STAGES), names
    # No secret anywhere: not in our log, the job specs and results, manifests, run.json.
    texts = [out] + [p.read_text(errors="replace")
                     for p in (tmp_path / "cluster/runs/c").rglob("*.json")]
    for text in texts:
        assert FAKE_KEY not in text and local_cluster.token not in text
