"""The Ray Jobs backend never runs two jobs of one stage at once, and no Jobs API request
can block forever (issue 13 item 9). A fake JobSubmissionClient stands in for the
cluster: no Ray, no network."""

from __future__ import annotations

import json
import shlex
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from ray.job_submission import JobStatus

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.orchestrator import Stage, StageContext, StageResult, backend_ray
from pipeline.orchestrator.backend_ray import (
    REQUEST_TIMEOUT_S,
    RayJobConnectionError,
    RayJobStateUnknownError,
    run_ray_job,
    submission_id_of,
    timed_client_class,
)
from pipeline.orchestrator.job import result_to_json
from pipeline.orchestrator.retry import is_retryable
from pipeline.storage import Location, RunPaths

pytestmark = pytest.mark.unit

ADDRESS = "http://127.0.0.2:8265"


class FakeJobs:
    """A Jobs API: submission id -> status; `down` makes every call fail to connect."""

    def __init__(self) -> None:
        self.status: dict[str, JobStatus] = {}
        self.calls: list[tuple[str, str]] = []
        self.down = False
        #: status of each earlier job at the moment a new one was submitted
        self.others_at_submit: list[dict[str, JobStatus]] = []
        self.finish_on_submit = True

    def _reach(self) -> None:
        if self.down:
            raise ConnectionError("Failed to connect to Ray at address: " + ADDRESS)

    def get_job_status(self, sid: str) -> JobStatus:
        self.calls.append(("status", sid))
        self._reach()
        if sid not in self.status:
            raise RuntimeError(f"Request failed with status code 404: Job {sid} does not "
                               "exist.")
        return self.status[sid]

    def stop_job(self, sid: str) -> bool:
        self.calls.append(("stop", sid))
        self._reach()
        running = not self.status[sid].is_terminal()
        self.status[sid] = JobStatus.STOPPED
        return running

    def submit_job(self, *, entrypoint: str, runtime_env: Any, submission_id: str,
                   metadata: Any) -> str:
        self.calls.append(("submit", submission_id))
        self._reach()
        self.others_at_submit.append(dict(self.status))
        self.status[submission_id] = JobStatus.RUNNING
        if self.finish_on_submit:  # the job runs and writes its result at once
            argv = shlex.split(entrypoint)
            spec = json.loads(Location(argv[argv.index("--spec") + 1]).read_bytes())
            Location(spec["result_url"]).write_json(result_to_json(
                StageResult(row_counts={"rows": 1}, summary="done")))
            self.status[submission_id] = JobStatus.SUCCEEDED
        return submission_id

    async def tail_job_logs(self, sid: str) -> AsyncIterator[str]:
        for line in ():
            yield line

    def get_job_info(self, sid: str) -> Any:
        return SimpleNamespace(message="")

    def get_job_logs(self, sid: str) -> str:
        return ""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeJobs:
    jobs = FakeJobs()
    monkeypatch.setattr(backend_ray, "_client", lambda cfg, token: jobs)
    bundle = SimpleNamespace(job_dir=tmp_path / "job", module_dir=tmp_path / "py",
                             entry_relative="jobs/stage.py", version="v")
    monkeypatch.setattr(backend_ray, "build_bundle", lambda: bundle)
    monkeypatch.setattr(backend_ray, "POLL_S", 0.0)
    monkeypatch.setattr(backend_ray, "MAX_POLL_FAILURES", 3)
    return jobs


def _cfg(tmp_path: Path) -> PipelineConfig:
    return config_from_dict({"run_id": "t", "storage": {"root": f"file://{tmp_path}/data"},
                             "modalities": ["text"],
                             "ray": {"backend": "job", "job_address": ADDRESS}})


def _stage() -> Stage:
    return Stage(name="train/text", run=lambda ctx: StageResult(), config_of=lambda c: {},
                 factory="pipeline.train.stage:train_stage", args=("text",), kind="ray")


def _ctx(cfg: PipelineConfig, attempt: str) -> StageContext:
    run = RunPaths(cfg.storage.location, "t")

    def no_spark() -> Any:
        raise AssertionError("no Spark here")

    return StageContext(cfg, run, run.stage(f"_staging/text-{attempt}"), {}, no_spark)


def _lose_the_api_while_running(fake: FakeJobs, cfg: PipelineConfig) -> str:
    """Attempt 1 is submitted and runs; then the API stops answering: the polls fail, the
    stop request fails too, and the attempt ends with the retryable connection error."""
    fake.finish_on_submit = False
    real_submit = fake.submit_job

    def submit_then_vanish(**kwargs: Any) -> str:
        sid = real_submit(**kwargs)
        fake.down = True
        return sid

    fake.submit_job = submit_then_vanish  # type: ignore[method-assign]
    with pytest.raises(RayJobConnectionError, match="lost the Ray Jobs API"):
        run_ray_job(_stage(), _ctx(cfg, "aaaaaaaaaaaa"), environ={})
    first = submission_id_of("t", "train/text", "aaaaaaaaaaaa")
    assert fake.status[first] == JobStatus.RUNNING  # it may still write its checkpoints
    fake.submit_job = real_submit  # type: ignore[method-assign]
    fake.finish_on_submit = True
    return first


def test_retry_stops_the_earlier_job_before_submitting(fake: FakeJobs, tmp_path: Path
                                                       ) -> None:
    cfg = _cfg(tmp_path)
    first = _lose_the_api_while_running(fake, cfg)
    fake.down = False  # the API answers again; the first job is still running
    result = run_ray_job(_stage(), _ctx(cfg, "bbbbbbbbbbbb"), environ={})
    second = submission_id_of("t", "train/text", "bbbbbbbbbbbb")
    assert result.summary == "done"
    assert fake.calls.index(("stop", first)) < fake.calls.index(("submit", second))
    # When the second job was submitted, the first one had ended.
    assert fake.others_at_submit[-1][first] == JobStatus.STOPPED


def test_retry_refuses_to_submit_while_the_earlier_job_state_is_unknown(
        fake: FakeJobs, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    first = _lose_the_api_while_running(fake, cfg)
    with pytest.raises(RayJobStateUnknownError, match=rf"earlier Ray job {first} .*ray job "
                       "status"):
        run_ray_job(_stage(), _ctx(cfg, "cccccccccccc"), environ={})
    assert not [c for c in fake.calls if c[0] == "submit" and c[1] != first]
    assert is_retryable(RayJobStateUnknownError("x"))  # the next attempt asks again


def test_unknown_or_finished_earlier_attempts_do_not_block(fake: FakeJobs, tmp_path: Path
                                                           ) -> None:
    cfg = _cfg(tmp_path)
    run_ray_job(_stage(), _ctx(cfg, "dddddddddddd"), environ={})  # wrote its result
    # An attempt whose spec was written but whose submission never reached the cluster.
    jobs = Path(f"{tmp_path}/data/runs/t/_jobs/train/text")
    (jobs / "gggggggggggg.spec.json").write_text("{}")
    before = len(fake.calls)
    run_ray_job(_stage(), _ctx(cfg, "eeeeeeeeeeee"), environ={})
    later = fake.calls[before:]
    # The finished attempt is not even looked up; the unknown one answers 404 and does
    # not block the submission.
    assert ("status", submission_id_of("t", "train/text", "dddddddddddd")) not in later
    assert later[:2] == [("status", submission_id_of("t", "train/text", "gggggggggggg")),
                         ("submit", submission_id_of("t", "train/text", "eeeeeeeeeeee"))]


def test_stalled_status_requests_count_as_failed_polls(fake: FakeJobs, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    fake.finish_on_submit = False

    def stalled(sid: str) -> JobStatus:
        raise requests.exceptions.ReadTimeout("read timed out")

    monkeypatch.setattr(fake, "get_job_status", stalled)
    with pytest.raises(RayJobConnectionError, match="read timed out"):
        run_ray_job(_stage(), _ctx(_cfg(tmp_path), "ffffffffffff"), environ={})


def test_every_jobs_api_request_has_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str, Any]] = []

    def fake_request(method: str, url: str, **kwargs: Any) -> Any:
        seen.append((method, url, kwargs.get("timeout")))
        body = ({"ray_version": "2.60.0"} if url.endswith("/api/version")
                else {"stopped": True})
        return SimpleNamespace(status_code=200, text=json.dumps(body), json=lambda: body,
                               raise_for_status=lambda: None)

    monkeypatch.setattr(requests, "request", fake_request)
    client = timed_client_class()(ADDRESS)
    assert client.stop_job("pipeline-t-x-1") is True
    assert {(m, u.rsplit(":8265", 1)[1]) for m, u, _ in seen} == {
        ("GET", "/api/version"), ("POST", "/api/jobs/pipeline-t-x-1/stop")}
    assert all(t == REQUEST_TIMEOUT_S for _, _, t in seen)  # the SDK alone sends None


def test_earlier_job_that_ignores_stop_blocks_the_retry(fake: FakeJobs, tmp_path: Path) -> None:
    from pipeline.orchestrator.backend_ray import RayJobStillRunningError, settle_earlier_jobs
    from pipeline.orchestrator.job import make_spec, write_spec

    cfg = _cfg(tmp_path)
    old = make_spec(_stage(), _ctx(cfg, "hhhhhhhhhhhh"))
    write_spec(old)
    sid = submission_id_of("t", "train/text", "hhhhhhhhhhhh")
    fake.status[sid] = JobStatus.RUNNING
    fake.stop_job = lambda s: fake.calls.append(("stop", s)) or True  # type: ignore[method-assign]
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += 10.0

    new = make_spec(_stage(), _ctx(cfg, "iiiiiiiiiiii"))
    with pytest.raises(RayJobStillRunningError, match=rf"{sid} .*still RUNNING 120 s after"):
        settle_earlier_jobs(fake, new, ADDRESS, sleep=sleep,  # type: ignore[arg-type]
                            clock=lambda: now[0])
    assert ("stop", sid) in fake.calls and is_retryable(RayJobStillRunningError("x"))
