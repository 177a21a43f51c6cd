"""One stage as a job: the spec a backend hands over and the job side that runs it.

The orchestrator writes a `JobSpec` (the stage's name and factory reference, resolved
config with secrets redacted, the storage root's URL and fsspec options, run id, staging
URL, the digests of the upstream manifests it saw, the result URL) to
`<run>/_jobs/<stage>/<attempt>.spec.json`, and starts `jobs/stage.py --spec URL` under
spark-submit or as a Ray job. The job rebuilds the stage from its factory reference
(`stage_from_factory`: no stage graph is consulted), loads the upstream manifests, checks
that they and its code are the ones the orchestrator computed the cache key from, calls
the stage's `run` with a real StageContext and writes the StageResult to
`<run>/_jobs/<stage>/<attempt>.json`, outside the published stage folder. The backend
reads it back and the runner publishes the staged files, exactly as in local mode.

Secrets are not in the spec: they come from the environment of the process running the
job (spark-submit's driver, the Ray cluster's job driver). The storage options are not
secrets (endpoint, region...); credentials never go in them (see `shippable_config`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipeline.config import REDACTED, PipelineConfig, config_from_dict, to_dict
from pipeline.orchestrator.stages import (
    LazySpark,
    Stage,
    StageContext,
    StageResult,
    UnknownStageError,
    stage_from_factory,
)
from pipeline.storage import Location, RunPaths, code_version, read_manifest

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
    factory: str  # "module:function" that builds the stage (Stage.factory)
    args: tuple[str, ...]  # its arguments (Stage.args)
    config: Mapping[str, Any]
    root: str  # the storage root's URL...
    run_id: str
    staging_url: str
    inputs: Mapping[str, str]  # upstream stage -> manifest digest the cache key used
    result_url: str
    code_version: str
    attempt: str
    options: Mapping[str, Any] = field(default_factory=dict)  # ...and its fsspec options

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> JobSpec:
        try:
            spec = cls(**body)
        except TypeError as exc:
            raise JobSpecError(f"not a job spec: {exc}") from None
        return replace(spec, args=tuple(str(a) for a in spec.args))

    @property
    def root_location(self) -> Location:
        return Location(self.root, self.options)

    @property
    def run(self) -> RunPaths:
        """The run layout, rebuilt on the job's side."""
        return RunPaths(self.root_location, self.run_id)

    @property
    def staging(self) -> Location:
        return self.root_location.at(self.staging_url)

    @property
    def result(self) -> Location:
        return self.root_location.at(self.result_url)

    @property
    def spec_location(self) -> Location:
        """Where the spec itself is written: beside its result."""
        return self.root_location.at(self.result_url[: -len(".json")] + ".spec.json")


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


def attempt_of(staging: Location) -> str:
    """The attempt id: the random suffix of the stage's staging folder (unique per try)."""
    return staging.name.rsplit("-", 1)[-1]


def make_spec(stage: Stage, ctx: StageContext) -> JobSpec:
    """The spec of running `stage` with `ctx` as a job; `JobSpecError` when the stage has
    no factory reference (a job could not rebuild it)."""
    if not stage.factory:
        raise JobSpecError(f"stage {stage.name} has no factory reference (Stage.factory): "
                           "a job cannot rebuild it")
    attempt = attempt_of(ctx.output)
    folder = ctx.run.run.join(JOBS_DIR, stage.name)
    root = ctx.run.root
    return JobSpec(stage=stage.name, factory=stage.factory, args=tuple(stage.args),
                   config=shippable_config(ctx.cfg), root=root.url, run_id=ctx.run.run_id,
                   staging_url=ctx.output.url,
                   inputs={n: m.digest for n, m in ctx.inputs.items()},
                   result_url=(folder / f"{attempt}.json").url, code_version=code_version(),
                   attempt=attempt, options=dict(root.options))


def spec_url_of(spec: JobSpec) -> str:
    return spec.spec_location.url


def write_spec(spec: JobSpec) -> str:
    """Write the spec next to where its result will be; returns its URL."""
    spec.spec_location.write_json(asdict(spec))
    return spec.spec_location.url


def job_argv(spec: JobSpec, spec_url: str) -> list[str]:
    """The arguments of `jobs/stage.py` for `spec` written at `spec_url`: the spec's URL,
    and the storage options that reach it when there are any (no secret: see JobSpec)."""
    argv = ["--spec", spec_url]
    if spec.options:
        argv += ["--storage-options", json.dumps(dict(spec.options), sort_keys=True)]
    return argv


def read_spec(spec: Location) -> JobSpec:
    """The spec at `spec`; `JobSpecError` when it is not one."""
    body = spec.read_json()
    if not isinstance(body, Mapping):
        raise JobSpecError(f"{spec.url} holds {type(body).__name__}, not a job spec")
    return JobSpec.from_json(body)


def result_to_json(result: StageResult) -> dict[str, Any]:
    return {"row_counts": dict(result.row_counts), "schemas": dict(result.schemas),
            "extra": dict(result.extra), "summary": result.summary}


def result_from_json(body: Mapping[str, Any]) -> StageResult:
    return StageResult(row_counts=dict(body.get("row_counts", {})),
                       schemas=dict(body.get("schemas", {})),
                       extra=dict(body.get("extra", {})), summary=str(body.get("summary", "")))


def read_result(spec: JobSpec) -> StageResult:
    """The StageResult the job wrote; FileNotFoundError when it wrote none."""
    return result_from_json(spec.result.read_json())


def job_stage(spec: JobSpec) -> Stage:
    """The stage of `spec`, rebuilt from its factory reference; `JobSpecError` when the
    reference does not resolve here (or builds another stage)."""
    if not spec.factory:
        raise JobSpecError(f"the spec of stage {spec.stage!r} names no factory")
    try:
        return stage_from_factory(spec.factory, spec.args, spec.stage)
    except UnknownStageError as exc:
        raise JobSpecError(str(exc)) from None


def run_job(spec: JobSpec, spark: Callable[[], SparkSession] | None = None) -> StageResult:
    """Run the stage of `spec` in this process and write its result (the job side).

    `spark`: the session to give the stage (default: one created on first use, and
    stopped at the end if this call created it)."""
    stage = job_stage(spec)
    ours = code_version()
    if ours != spec.code_version:
        raise JobSpecError(f"job code {ours} differs from the orchestrator's "
                           f"{spec.code_version}: the shipped package was not imported")
    cfg = config_from_dict(spec.config)
    run = spec.run
    inputs = {}
    for name, digest in spec.inputs.items():
        manifest = read_manifest(run.stage(name))
        if manifest.digest != digest:
            raise JobSpecError(f"input {name} changed since the job was planned: manifest "
                               f"{manifest.digest[:12]}, expected {digest[:12]}")
        inputs[name] = manifest
    session = LazySpark(cfg)
    ctx = StageContext(cfg, run, spec.staging, inputs, spark or session)
    log.info("job %s attempt %s: running with %d input(s) into %s", spec.stage, spec.attempt,
             len(inputs), spec.staging_url)
    try:
        result = stage.run(ctx)
    finally:
        session.stop()
    # Through JSON, as the backend reads it back: the manifest then reads the same.
    spec.result.write_json(result_to_json(result))
    log.info("job %s attempt %s: done, %d row count(s), result %s", spec.stage, spec.attempt,
             len(result.row_counts), spec.result_url)
    return read_result(spec)  # as the backend will read it


def main(argv: Sequence[str] | None = None) -> int:
    """`jobs/stage.py --spec URL`: run one stage of a run as a job."""
    from pipeline.logs import setup_logging

    p = argparse.ArgumentParser(description="Run one pipeline stage from a job spec "
                                "written by the orchestrator (spark-submit / Ray job).")
    p.add_argument("--spec", required=True, metavar="URL", help="the job spec JSON")
    p.add_argument("--storage-options", metavar="JSON", default="{}",
                   help="fsspec options that reach the spec's storage (storage.options: "
                   "endpoint, region; never credentials, which come from the environment)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        try:
            options = json.loads(args.storage_options)
        except json.JSONDecodeError as exc:
            raise JobSpecError(f"--storage-options is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise JobSpecError(f"--storage-options must be a JSON object, got {options!r}")
        run_job(read_spec(Location(args.spec, options)))
    except JobSpecError as exc:
        print(f"job spec error: {exc}", file=sys.stderr)
        return 2
    return 0
