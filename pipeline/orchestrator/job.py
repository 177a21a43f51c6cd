"""One stage as a job: the spec a backend hands over and the job side that runs it.

The orchestrator writes a `JobSpec` (stage name, resolved config with secrets redacted,
run root and id, staging URL, the digests of the upstream manifests it saw, the result
URL) to `<run>/_jobs/<stage>/<attempt>.spec.json`, and starts `jobs/stage.py --spec URL`
under spark-submit or as a Ray job. The job loads the upstream manifests, checks that
they and its code are the ones the orchestrator computed the cache key from, calls the
stage's `run` with a real StageContext and writes the StageResult to
`<run>/_jobs/<stage>/<attempt>.json`, outside the published stage folder. The backend
reads it back and the runner publishes the staged files, exactly as in local mode.

Secrets are not in the spec: they come from the environment of the process running the
job (spark-submit's driver, the Ray cluster's job driver).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import REDACTED, PipelineConfig, config_from_dict, to_dict
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import (
    RunPaths,
    code_version,
    join,
    read_json,
    read_manifest,
    write_json_atomic,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

JOBS_DIR = "_jobs"


class JobSpecError(ValueError):
    """A job spec cannot be run as written (wrong stage, code, inputs or config)."""


@dataclass(frozen=True)
class JobSpec:
    """What a job needs to run one stage; JSON-ready, holds no secret."""

    stage: str
    config: Mapping[str, Any]
    root: str
    run_id: str
    staging_url: str
    inputs: Mapping[str, str]  # upstream stage -> manifest digest the cache key used
    result_url: str
    code_version: str
    attempt: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> JobSpec:
        try:
            return cls(**body)
        except TypeError as exc:
            raise JobSpecError(f"not a job spec: {exc}") from None


def _find_redacted(data: Any, path: str = "") -> list[str]:
    if isinstance(data, Mapping):
        return [p for k, v in data.items() for p in _find_redacted(v, f"{path}.{k}" if path
                                                                   else str(k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _find_redacted(v, f"{path}[{i}]")]
    return [path] if data == REDACTED else []


def shippable_config(cfg: PipelineConfig) -> dict[str, Any]:
    """The config as a job receives it: redacted, and refused if redaction removed a value
    the job would need (a credential put in the YAML instead of the environment)."""
    body: dict[str, Any] = to_dict(cfg, redact=True)
    masked = _find_redacted(body)
    if masked:
        raise JobSpecError(
            f"configuration value(s) {', '.join(masked)} look like secrets and are never "
            "shipped to a job; put them in the environment of the job's processes instead")
    return body


def attempt_of(staging_url: str) -> str:
    """The attempt id: the random suffix of the stage's staging folder (unique per try)."""
    return staging_url.rstrip("/").rsplit("-", 1)[-1]


def make_spec(stage: Stage, ctx: StageContext) -> JobSpec:
    """The spec of running `stage` with `ctx` as a job."""
    attempt = attempt_of(ctx.staging_url)
    folder = join(ctx.run.run_url, JOBS_DIR, *stage.name.split("/"))
    return JobSpec(stage=stage.name, config=shippable_config(ctx.cfg), root=ctx.run.root,
                   run_id=ctx.run.run_id, staging_url=ctx.staging_url,
                   inputs={n: m.digest for n, m in ctx.inputs.items()},
                   result_url=join(folder, f"{attempt}.json"), code_version=code_version(),
                   attempt=attempt, options=dict(ctx.cfg.storage.options))


def spec_url_of(spec: JobSpec) -> str:
    return spec.result_url[: -len(".json")] + ".spec.json"


def write_spec(spec: JobSpec) -> str:
    """Write the spec next to where its result will be; returns its URL."""
    url = spec_url_of(spec)
    write_json_atomic(url, asdict(spec), spec.options)
    return url


def result_to_json(result: StageResult) -> dict[str, Any]:
    return {"row_counts": dict(result.row_counts), "schemas": dict(result.schemas),
            "extra": dict(result.extra), "summary": result.summary}


def result_from_json(body: Mapping[str, Any]) -> StageResult:
    return StageResult(row_counts=dict(body.get("row_counts", {})),
                       schemas=dict(body.get("schemas", {})),
                       extra=dict(body.get("extra", {})), summary=str(body.get("summary", "")))


def read_result(spec: JobSpec) -> StageResult:
    """The StageResult the job wrote; FileNotFoundError when it wrote none."""
    return result_from_json(read_json(spec.result_url, spec.options))


def _stage_named(name: str, stages: Sequence[Stage]) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise JobSpecError(f"stage {name!r} is not in the stage graph; known: "
                       f"{', '.join(s.name for s in stages)}")


def run_job(spec: JobSpec, stages: Sequence[Stage] | None = None,
            spark: Callable[[], SparkSession] | None = None) -> StageResult:
    """Run the stage of `spec` in this process and write its result (the job side)."""
    from pipeline.orchestrator.stages import default_stages

    stage = _stage_named(spec.stage, stages if stages is not None else default_stages())
    ours = code_version()
    if ours != spec.code_version:
        raise JobSpecError(f"job code {ours} differs from the orchestrator's "
                           f"{spec.code_version}: the shipped package was not imported")
    cfg = config_from_dict(spec.config)
    run = RunPaths(spec.root, spec.run_id)
    inputs = {}
    for name, digest in spec.inputs.items():
        manifest = read_manifest(run.stage(name), spec.options)
        if manifest.digest != digest:
            raise JobSpecError(f"input {name} changed since the job was planned: manifest "
                               f"{manifest.digest[:12]}, expected {digest[:12]}")
        inputs[name] = manifest
    session = _LazySession(cfg)
    ctx = StageContext(cfg, run, spec.staging_url, inputs, spark or session)
    log.info("job %s attempt %s: running with %d input(s) into %s", spec.stage, spec.attempt,
             len(inputs), spec.staging_url)
    try:
        result = stage.run(ctx)
    finally:
        session.stop()
    # Through JSON, as the backend reads it back: the manifest then reads the same.
    body = result_to_json(result)
    write_json_atomic(spec.result_url, body, spec.options)
    log.info("job %s attempt %s: done, %d row count(s), result %s", spec.stage, spec.attempt,
             len(result.row_counts), spec.result_url)
    return read_result(spec)  # as the backend will read it


class _LazySession:
    """The job's SparkSession, created on first use (under spark-submit: its master)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.session: SparkSession | None = None

    def __call__(self) -> SparkSession:
        if self.session is None:
            from pipeline.spark import get_spark

            self.session = get_spark(self.cfg.spark)
        return self.session

    def stop(self) -> None:
        if self.session is not None:
            self.session.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """`jobs/stage.py --spec URL`: run one stage of a run as a job."""
    from pipeline.logs import setup_logging

    p = argparse.ArgumentParser(description="Run one pipeline stage from a job spec "
                                "written by the orchestrator (spark-submit / Ray job).")
    p.add_argument("--spec", required=True, metavar="URL", help="the job spec JSON")
    args = p.parse_args(argv)
    setup_logging()
    try:
        spec = JobSpec.from_json(read_json(args.spec))
        run_job(spec)
    except JobSpecError as exc:
        print(f"job spec error: {exc}", file=sys.stderr)
        return 2
    return 0
