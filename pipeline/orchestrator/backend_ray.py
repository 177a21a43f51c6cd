"""The Ray Jobs backend: one Ray stage as `python jobs/stage.py --spec URL` on a cluster.

The job is submitted to `ray.job_address` (the dashboard's Jobs API) with the package as
`py_modules` and a working directory that holds only `jobs/stage.py` (see package.py),
so neither data/, .venv nor .git is ever uploaded. Its logs are streamed into our log
while we wait; a failed or stopped job raises with the job id, Ray's status message and
the log tail; losing the connection raises the orchestrator's retryable error.

One job per stage at a time: each attempt's submission id is derived from its spec
(`pipeline-<run>-<stage>-<attempt>`), and the spec is written before the job is submitted.
Before submitting, every earlier attempt of the stage whose spec exists and which wrote no
result is looked up by its submission id: one still running is stopped and waited for, and
while an earlier job's state cannot be learned (the Jobs API does not answer) no new job
is submitted (`RayJobStateUnknownError`, retryable: the next attempt asks again). Every
request to the Jobs API has a timeout (`REQUEST_TIMEOUT_S`), so a stalled connection
counts as a failed poll instead of blocking forever.

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
from pipeline.orchestrator.job import JobSpec, job_argv, make_spec, read_result, write_spec
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
# (connect, read) timeout of every Jobs API request, in seconds (the SDK sets none).
REQUEST_TIMEOUT_S = (10.0, 60.0)
# How long to wait for an earlier attempt's job to end after asking it to stop.
STOP_WAIT_S = 120.0


class InsecureJobAddressError(ValueError):
    """A non-local Ray job address without token authentication configured."""


class RayJobFailed(RuntimeError):
    """The Ray job ended FAILED or STOPPED (or ran past its timeout)."""


class RayJobConnectionError(RetryableError, ConnectionError):
    """The Jobs API could not be reached: transient, the orchestrator may retry."""


class RayJobStateUnknownError(RayJobConnectionError):
    """An earlier attempt's job may still be running and its state cannot be learned: no
    new job is submitted beside it (retryable: the next attempt asks again)."""


class RayJobStillRunningError(RetryableError, RuntimeError):
    """An earlier attempt's job did not end within STOP_WAIT_S of being asked to stop."""


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


def _request_errors() -> tuple[type[BaseException], ...]:
    """What a Jobs API call raises when the server cannot be reached or does not answer in
    time (requests' Timeout is no ConnectionError, hence the whole RequestException)."""
    import requests

    return (ConnectionError, TimeoutError, requests.exceptions.RequestException)


def timed_client_class() -> type[JobSubmissionClient]:
    """JobSubmissionClient whose every HTTP request carries `REQUEST_TIMEOUT_S`.

    The SDK sends all its calls (version check, submit, package upload, status, stop,
    info, logs) through `_do_request`, which passes extra keywords on to
    `requests.request`; this subclass adds the timeout there."""
    from ray.job_submission import JobSubmissionClient

    class TimedJobSubmissionClient(JobSubmissionClient):
        def _do_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", REQUEST_TIMEOUT_S)
            return super()._do_request(method, endpoint, **kwargs)

    return TimedJobSubmissionClient


def _client(cfg: RayConfig, token: str | None) -> JobSubmissionClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return timed_client_class()(cfg.job_address, headers=headers)
    except _request_errors() as exc:
        raise RayJobConnectionError(f"cannot reach the Ray Jobs API at {cfg.job_address}: "
                                    f"{exc}") from exc


def submission_id_of(run_id: str, stage: str, attempt: str) -> str:
    """The Ray submission id of one attempt of `stage` in run `run_id`."""
    return f"pipeline-{run_id}-{stage.replace('/', '-')}-{attempt}"


def _is_not_found(exc: BaseException) -> bool:
    # The SDK reports an unknown submission id only through its message.
    return isinstance(exc, RuntimeError) and "status code 404" in str(exc)


def _earlier_attempts(spec: JobSpec) -> list[str]:
    """Attempts of this stage, other than `spec`'s, whose spec was written (so a job may
    have been submitted) and whose result was not (so it may not have finished)."""
    folder = spec.spec_location.parent
    names = {f.name for f in folder.files() if f.parent.url == folder.url}
    return sorted(n[: -len(".spec.json")] for n in names
                  if n.endswith(".spec.json") and n != f"{spec.attempt}.spec.json"
                  and f"{n[: -len('.spec.json')]}.json" not in names)


def settle_earlier_jobs(client: JobSubmissionClient, spec: JobSpec, address: str,
                        sleep: Any = time.sleep, clock: Any = time.monotonic) -> None:
    """Make sure no earlier attempt of `spec`'s stage still runs on the cluster: stop and
    wait for one that does; raise when that cannot be made sure of."""
    from ray.job_submission import JobStatus

    errors = _request_errors()
    stopping_errors: tuple[type[BaseException], ...] = (*errors, RuntimeError)
    for attempt in _earlier_attempts(spec):
        sid = submission_id_of(spec.run_id, spec.stage, attempt)
        unknown = (f"cannot tell whether the earlier Ray job {sid} of stage {spec.stage} "
                   f"is still running (the Jobs API at {address} did not answer")
        try:
            status = client.get_job_status(sid)
        except errors as exc:
            raise RayJobStateUnknownError(
                f"{unknown}: {exc}); not submitting another job that would write the same "
                f"outputs. Check it with `ray job status {sid} --address {address}` (stop "
                "it with `ray job stop`) or wait for the API to answer, then rerun") from exc
        except RuntimeError as exc:
            if _is_not_found(exc):
                continue  # never submitted (or the cluster no longer knows it)
            raise RayJobStateUnknownError(f"{unknown} usefully: {exc})") from exc
        if status.is_terminal():
            continue
        log.warning("earlier Ray job %s of stage %s is still %s: stopping it before "
                    "submitting attempt %s", sid, spec.stage, status.value, spec.attempt)
        deadline = clock() + STOP_WAIT_S
        try:
            client.stop_job(sid)
            while not status.is_terminal():
                if clock() > deadline:
                    raise RayJobStillRunningError(
                        f"earlier Ray job {sid} of stage {spec.stage} is still "
                        f"{status.value} {STOP_WAIT_S:.0f} s after it was asked to stop; "
                        "not submitting another job beside it")
                sleep(POLL_S)
                status = client.get_job_status(sid)
        except RayJobStillRunningError:
            raise
        except stopping_errors as exc:
            raise RayJobStateUnknownError(
                f"{unknown} while it was being stopped: {exc}); not submitting another "
                f"job. Check it with `ray job status {sid} --address {address}`") from exc
        if status != JobStatus.STOPPED:
            log.info("earlier Ray job %s ended %s", sid, status.value)


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
    errors = _request_errors()
    started = time.monotonic()
    failures = 0
    while True:
        try:
            status = client.get_job_status(job_id)
            failures = 0
        except errors as exc:
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
    client = _client(cfg, token)
    settle_earlier_jobs(client, spec, str(cfg.job_address))
    # Written before the submission: if the submit call fails after the server took the
    # job, the next attempt still finds this attempt's submission id.
    spec_url = write_spec(spec)
    submission_id = submission_id_of(spec.run_id, stage.name, spec.attempt)
    try:
        job_id = client.submit_job(entrypoint=job_entrypoint(cfg, bundle,
                                                             job_argv(spec, spec_url)),
                                   runtime_env=job_runtime_env(cfg, bundle, environ),
                                   submission_id=submission_id,
                                   metadata={"stage": stage.name, "run_id": spec.run_id})
    except _request_errors() as exc:
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
