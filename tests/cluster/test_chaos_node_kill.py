"""A Ray node dies under a training job: the job waits for the node (or fails, saying the
worker count cannot be met), no checkpoint is corrupt, and a rerun completes.

The job is the real entry point, `jobs/train.py`, submitted through the Jobs API of the
local cluster: 2 Ray Train workers placed STRICT_SPREAD, one per node. Rank 1 stalls
right after the step-4 checkpoint (fault injection), so the kill always lands mid-run
with one checkpoint committed; then the worker node (raylet, agents and workers) is
SIGKILLed, as a lost machine would be.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from pipeline.storage import Location, RunPaths
from pipeline.train import checkpoint as ckpt
from pipeline.train.data import publish_split_table
from pipeline.train.faults import FAULT_ENV
from pipeline.train.tasks.transactions import synthetic_transactions
from pipeline.train.trainer import checkpoint_root

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.cluster.conftest import LocalCluster

pytestmark = pytest.mark.chaos

REPO = Path(__file__).resolve().parents[2]
TASK = "transactions"
EPOCHS = 2
# 2 workers x 20 batches of 32 per epoch, 2 micro-batches per step: 10 steps an epoch;
# checkpoints at steps 4, 8, 10 (epoch end), 12, 16 and 20.
SETTINGS: dict[str, Any] = {
    "ray": {"address": "auto"},  # the job's driver joins the cluster it runs on
    "train": {"epochs": EPOCHS, "seed": 3, "warmup_steps": 3, "grad_accum_steps": 2,
              "checkpoint_every_steps": 4, "log_every_steps": 5, "keep_best": 2,
              "max_failures": 3,
              "scaling": {"num_workers": 2, "cpus_per_worker": 1, "use_gpu": "no",
                          "placement_strategy": "STRICT_SPREAD"},
              "transactions": {"batch_size": 32, "hidden": 16, "lr": 5e-3}},
}
# Generous: reaching the first checkpoint (job start, Ray Data preparation, worker group)
# takes ~50 s on 2 idle cores and ~110 s when the cores are shared with other test runs.
JOB_TIMEOUT_S = 240.0
# Ray Train gives a new worker group this long to be placed (default 60 s); the node is
# back well before that, but 2 shared cores can be slow.
JOB_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "120", "PYTHONHASHSEED": "0"}


def _alive_ips(cluster: LocalCluster) -> set[str]:
    request = urllib.request.Request(f"{cluster.ray_dashboard}/api/v0/nodes?limit=100",
                                     headers=cluster.auth_headers())
    with urllib.request.urlopen(request, timeout=10) as response:
        rows = json.loads(response.read())["data"]["result"]["result"]
    return {r["node_ip"] for r in rows if r["state"] == "ALIVE"}


def _wait(what: str, check: Any, timeout_s: float, detail: Any = lambda: "") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:.0f} s\n{detail()}"
        time.sleep(0.5)


def _submit(client: Any, config: Path, run_id: str, env: dict[str, str]) -> str:
    entrypoint = (f"{sys.executable} {REPO / 'jobs' / 'train.py'} --config {config} "
                  f"--run-id {run_id} --task {TASK}")
    return str(client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env}))


def _finish(client: Any, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> tuple[str, str]:
    from ray.job_submission import JobStatus

    def done() -> Any:
        status = client.get_job_status(job_id)
        return status if status in (JobStatus.SUCCEEDED, JobStatus.FAILED,
                                    JobStatus.STOPPED) else None

    try:
        status = _wait(f"job {job_id}", done, timeout_s,
                       lambda: client.get_job_logs(job_id)[-4000:])
    except AssertionError:
        client.stop_job(job_id)
        raise
    return str(status), client.get_job_logs(job_id)


def _checkpoints_intact(root: Location) -> list[tuple[str, ckpt.CheckpointMeta]]:
    """Every checkpoint folder is either complete and loads with matching hashes, or has
    no checkpoint.json (an upload cut short: readers never take it for a checkpoint)."""
    fs, path = root.filesystem()
    listed = ckpt.list_checkpoints(fs, path)
    committed = [p for p in sorted(fs.ls(path)) if Path(p).name.startswith("checkpoint_")
                 and fs.exists(f"{p}/{ckpt.META_FILE}")]
    assert [p for p, _ in listed] == [p.rstrip("/") for p in committed]
    for folder, meta in listed:
        loaded = ckpt.load_checkpoint(fs, folder)  # verifies every file's digest
        assert loaded.meta.step == meta.step and loaded.model_state
    return listed


def test_worker_node_killed_after_first_checkpoint(ray_cluster_auth: LocalCluster,
                                                   tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    cluster = ray_cluster_auth
    run_id = "node-kill"
    run = RunPaths(Location(f"file://{tmp_path}"), run_id)
    publish_split_table(run.stage(f"dedup/{TASK}"),
                        synthetic_transactions(1600, seed=4, fraud_rate=0.2))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**SETTINGS, "storage": {"root": f"file://{tmp_path}"}}))
    root = checkpoint_root(run, TASK)
    _, root_path = root.filesystem()
    marker = tmp_path / "stalled"
    client = JobSubmissionClient(cluster.ray_dashboard, headers=cluster.auth_headers())
    started = time.monotonic()
    job = _submit(client, config, run_id, {**JOB_ENV, FAULT_ENV: f"hang:4:1:{marker}"})
    try:
        first = Path(root_path) / "checkpoint_00000004" / ckpt.META_FILE
        _wait("the step-4 checkpoint and the stall after it",
              lambda: (marker.exists() and first.exists())
              or client.get_job_status(job) in (JobStatus.FAILED, JobStatus.STOPPED),
              JOB_TIMEOUT_S, lambda: client.get_job_logs(job)[-4000:])
        assert client.get_job_status(job) == JobStatus.RUNNING, client.get_job_logs(job)
        stalled_at = time.monotonic() - started
        killed = cluster.cli("kill-ray-worker")
        assert killed.returncode == 0, killed.stderr
        _wait("the head to declare the worker node dead",
              lambda: _alive_ips(cluster) == {"127.0.0.2"}, 60)
        # With one node left the two STRICT_SPREAD workers cannot be placed: the job
        # either waits for a node or fails saying so.
        time.sleep(3.0)
        waiting = client.get_job_status(job) in (JobStatus.RUNNING, JobStatus.PENDING)
        restarted = cluster.cli("start-ray-worker", timeout=180)
        assert restarted.returncode == 0, restarted.stderr
        back_at = time.monotonic() - started
        status, logs = _finish(client, job)
        print(f"stalled after the step-4 checkpoint at {stalled_at:.1f} s, worker node back "
              f"at {back_at:.1f} s, job {status} (waited: {waiting}) at "
              f"{time.monotonic() - started:.1f} s")
    finally:
        if client.get_job_status(job) in (JobStatus.RUNNING, JobStatus.PENDING):
            client.stop_job(job)
        if "127.0.0.3" not in _alive_ips(cluster):  # leave the cluster whole for others
            cluster.cli("start-ray-worker", timeout=180)

    if not (waiting and status == str(JobStatus.SUCCEEDED)):
        # It gave up: the message must say that the workers could not be placed.
        assert status == str(JobStatus.FAILED), logs[-4000:]
        assert any(w in logs.lower() for w in ("worker group", "placement group",
                                               "resources")), logs[-4000:]
    listed = _checkpoints_intact(root)
    assert listed and all(meta.step >= 4 for _, meta in listed)

    # The same run again, the worker node back: it completes (or finds it complete).
    rerun_started = time.monotonic()
    rerun = _submit(client, config, run_id, JOB_ENV)
    status, logs = _finish(client, rerun)
    print(f"rerun {status} in {time.monotonic() - rerun_started:.1f} s")
    assert status == str(JobStatus.SUCCEEDED), logs[-4000:]
    listed = _checkpoints_intact(root)
    fs, _ = root.filesystem()
    latest = ckpt.latest_checkpoint(fs, root_path)
    assert latest is not None and latest[1].epoch == EPOCHS and latest[1].step == 20
    assert latest[1].world_size == 2 and len(latest[1].history) == EPOCHS
    assert listed[-1][0] == latest[0]
    assert cluster.token not in logs
