"""The Ray Jobs backend: one Ray stage as `python jobs/stage.py --spec URL` on a cluster.

The job is submitted to `ray.job_address` (the dashboard's Jobs API) with the package as
`py_modules` and a working directory that holds only `jobs/stage.py` (see package.py),
so neither data/, .venv nor .git is ever uploaded. Its logs are streamed into our log
while we wait; a failed or stopped job raises with the job id, Ray's status message and
the log tail; losing the connection raises the orchestrator's retryable error.

Security: the Ray token (from the variable named by `ray.auth_token_env`) is sent as an
HTTP header when it is set, and a job is never submitted to an address outside
127.0.0.0/8 without it. The runtime_env carries only a whitelist of non-secret settings;
the job's secrets come from the environment of the cluster's processes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.config import RayConfig, _looks_secret
from pipeline.orchestrator.job import job_argv, make_spec, read_result, write_spec
from pipeline.orchestrator.package import Bundle, build_bundle
from pipeline.orchestrator.retry import RetryableError
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.ray_env import is_local_address, warn_if_plaintext

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

log = logging.getLogger(__name__)

# Non-secret settings a job inherits from us (anything else comes from the cluster).
ENV_WHITELIST = ("PYTHONHASHSEED", "PIPELINE_LOG_LEVEL", "PIPELINE_TRAIN_FAULT",
                 "SPARK_LOCAL_IP", "RAY_USAGE_STATS_ENABLED", "OMP_NUM_THREADS",
                 "CUBLAS_WORKSPACE_CONFIG", "TZ")
TAIL_LINES = 40
POLL_S = 1.0
# Consecutive failed status polls (about one per second) before the connection is lost.
MAX_POLL_FAILURES = 15


class InsecureJobAddressError(ValueError):
    """A non-local Ray job address without token authentication configured."""


class RayJobFailed(RuntimeError):
    """The Ray job ended FAILED or STOPPED (or ran past its timeout)."""


class RayJobConnectionError(RetryableError, ConnectionError):
    """The Jobs API could not be reached: transient, the orchestrator may retry."""


def submission_token(cfg: RayConfig, environ: Mapping[str, str]) -> str | None:
    """The token to send, or None; refuses a non-local address without one."""
    address = cfg.job_address or ""
    token = environ.get(cfg.auth_token_env) or None
    if not is_local_address(address) and token is None:
        raise InsecureJobAddressError(
            f"refusing to submit a Ray job to {address!r}: it is not a local address "
            f"(127.0.0.0/8) and token authentication is not configured; set the cluster's "
            f"token in the environment variable {cfg.auth_token_env} (ray.auth_token_env)")
    if token is not None:
        warn_if_plaintext(address, f"Ray token ({cfg.auth_token_env})")
    return token


def job_env_vars(cfg: RayConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The whitelisted, non-secret variables of our environment a job gets."""
    names = [*ENV_WHITELIST, *cfg.job_env_vars]
    env = {n: environ[n] for n in names
           if n in environ and n != cfg.auth_token_env and not _looks_secret(n)}
    env.setdefault("COLUMNS", "400")  # whole log lines in the streamed job log
    return env


def job_runtime_env(cfg: RayConfig, bundle: Bundle,
                    environ: Mapping[str, str]) -> dict[str, Any]:
    """runtime_env of a stage job: the shipped package, the entry point, the whitelist."""
    return {"working_dir": str(bundle.job_dir), "py_modules": [str(bundle.module_dir)],
            "env_vars": job_env_vars(cfg, environ)}


def job_entrypoint(cfg: RayConfig, bundle: Bundle, job_args: Sequence[str]) -> str:
    """The job's command line (`job_argv`: the spec's URL and storage options, no secret)."""
    import shlex

    return " ".join(shlex.quote(a) for a in (cfg.job_python, bundle.entry_relative,
                                              *job_args))


def _client(cfg: RayConfig, token: str | None) -> JobSubmissionClient:
    import requests
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(cfg.job_address, headers=headers)
    except (ConnectionError, requests.exceptions.ConnectionError) as exc:
        raise RayJobConnectionError(f"cannot reach the Ray Jobs API at {cfg.job_address}: "
                                    f"{exc}") from exc


def _stream_logs(client: JobSubmissionClient, job_id: str, prefix: str,
                 tail: deque[str]) -> None:
    async def consume() -> None:
        async for chunk in client.tail_job_logs(job_id):
            for line in chunk.splitlines():
                line = line.rstrip()  # rich pads its lines to the console width
                tail.append(line)
                log.info("%s %s", prefix, line)

    try:
        asyncio.run(consume())
    except Exception as exc:  # the status poll decides the outcome; logs are best effort
        log.warning("%s log stream ended early: %s: %s", prefix, type(exc).__name__, exc)


def _wait(client: JobSubmissionClient, job_id: str, timeout_s: float | None) -> Any:
    import requests

    started = time.monotonic()
    failures = 0
    while True:
        try:
            status = client.get_job_status(job_id)
            failures = 0
        except (ConnectionError, requests.exceptions.ConnectionError) as exc:
            failures += 1
            if failures >= MAX_POLL_FAILURES:
                raise RayJobConnectionError(f"lost the Ray Jobs API while waiting for job "
                                            f"{job_id}: {exc}") from exc
            status = None
        if status is not None and status.is_terminal():
            return status
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            client.stop_job(job_id)
            raise RayJobFailed(f"Ray job {job_id} ran past ray.job_timeout_s={timeout_s}s "
                               "and was stopped")
        time.sleep(POLL_S)


def run_ray_job(stage: Stage, ctx: StageContext,
                environ: Mapping[str, str] | None = None) -> StageResult:
    """Run `stage` as a Ray job and return the StageResult it wrote."""
    cfg = ctx.cfg.ray
    environ = os.environ if environ is None else environ
    token = submission_token(cfg, environ)
    bundle = build_bundle()
    spec = make_spec(stage, ctx)
    spec_url = write_spec(spec)
    client = _client(cfg, token)
    submission_id = f"pipeline-{spec.run_id}-{stage.name.replace('/', '-')}-{spec.attempt}"
    try:
        job_id = client.submit_job(entrypoint=job_entrypoint(cfg, bundle,
                                                             job_argv(spec, spec_url)),
                                   runtime_env=job_runtime_env(cfg, bundle, environ),
                                   submission_id=submission_id,
                                   metadata={"stage": stage.name, "run_id": spec.run_id})
    except ConnectionError as exc:
        raise RayJobConnectionError(f"cannot submit to {cfg.job_address}: {exc}") from exc
    prefix = f"[ray job {job_id}]"
    log.info("%s submitted stage %s to %s (package %s)", prefix, stage.name, cfg.job_address,
             bundle.version)
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    streamer = threading.Thread(target=_stream_logs, args=(client, job_id, prefix, tail),
                                daemon=True)
    streamer.start()
    try:
        status = _wait(client, job_id, cfg.job_timeout_s)
    except BaseException:
        try:  # interrupted or cut off: do not leave the job training on its own
            client.stop_job(job_id)
        except Exception as exc:
            log.warning("%s could not be stopped: %s", prefix, exc)
        raise
    streamer.join(timeout=30)
    seconds = time.perf_counter() - started
    from ray.job_submission import JobStatus

    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(job_id)
        lines = (client.get_job_logs(job_id).splitlines()[-TAIL_LINES:]
                 if not tail else list(tail))
        raise RayJobFailed(f"Ray job {job_id} (stage {stage.name}) ended {status.value} after "
                           f"{seconds:.1f}s: {info.message}; last {len(lines)} log lines:\n"
                           + "\n".join(lines))
    try:
        result = read_result(spec)
    except FileNotFoundError:
        raise RayJobFailed(f"Ray job {job_id} (stage {stage.name}) succeeded but wrote no "
                           f"result at {spec.result_url}") from None
    log.info("%s stage %s done in %.1fs: %s", prefix, stage.name, seconds, result.summary)
    return result
