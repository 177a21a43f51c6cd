"""Run the stage graph: cache keys, atomic publication, run.json state, a summary.

A stage whose published manifest carries the cache key computed now is skipped: same
code, same config slice, same upstream manifests means the same output. Anything else
re-runs, and because downstream keys include upstream manifest digests, so does
everything after it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.config import PipelineConfig, to_dict
from pipeline.orchestrator.backends import execute
from pipeline.orchestrator.stages import Stage, StageContext, default_stages
from pipeline.storage import (
    Manifest,
    ManifestMismatchError,
    MissingManifestError,
    RunPaths,
    StageWriter,
    cache_key,
    code_version,
    read_json,
    read_manifest,
    write_json_atomic,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage and the run."""


@dataclass(frozen=True)
class StageOutcome:
    name: str
    state: str  # "ran" | "cached" | "skipped"
    seconds: float
    summary: str
    rows: dict[str, int]


def run_id_of(cfg: PipelineConfig) -> str:
    return cfg.run_id or "local"


def _load_state(run: RunPaths) -> dict[str, Any]:
    try:
        state = read_json(run.run_json)
    except FileNotFoundError:
        return {"run_id": run.run_id, "stages": {}}
    return state if isinstance(state, dict) else {"run_id": run.run_id, "stages": {}}


def _save_state(run: RunPaths, cfg: PipelineConfig, state: dict[str, Any]) -> None:
    state["config"] = to_dict(cfg, redact=True)
    state["code_version"] = code_version()
    write_json_atomic(run.run_json, state)


class _LazySpark:
    """Creates the SparkSession on first use; stops it at the end only if it created it
    (a session that already existed belongs to the caller: a notebook, a test fixture,
    spark-submit)."""

    def __init__(self, cfg: PipelineConfig) -> None:
        self.cfg = cfg
        self.session: SparkSession | None = None
        self.owned = False

    def __call__(self) -> SparkSession:
        if self.session is None:
            from pyspark.sql import SparkSession

            from pipeline.spark import get_spark

            self.owned = SparkSession.getActiveSession() is None
            self.session = get_spark(self.cfg.spark)
        return self.session

    def stop(self) -> None:
        if self.session is not None and self.owned:
            self.session.stop()


@dataclass
class _Run:
    """Mutable state of one `run_pipeline` call."""

    cfg: PipelineConfig
    paths: RunPaths
    state: dict[str, Any]
    spark: _LazySpark
    version: str
    manifests: dict[str, Manifest]

    def save(self) -> None:
        _save_state(self.paths, self.cfg, self.state)


def _existing_manifest(stage_url: str) -> Manifest | None:
    try:
        return read_manifest(stage_url)
    except (MissingManifestError, ManifestMismatchError):
        return None


def _run_stage(r: _Run, stage: Stage, inputs: dict[str, Manifest], key: str,
               reason: str) -> StageOutcome:
    log.info("stage %s runs: %s", stage.name, reason)
    stage_state: dict[str, Any] = {"state": "running", "cache_key": key, "started": time.time()}
    r.state.setdefault("stages", {})[stage.name] = stage_state
    r.save()
    writer = StageWriter(r.paths.stage(stage.name), stage.name)
    started = time.perf_counter()
    try:
        result = execute(stage, StageContext(r.cfg, r.paths, writer.staging_url, inputs,
                                             r.spark))
        manifest = writer.publish(row_counts=result.row_counts, schemas=result.schemas,
                                  inputs={n: m.digest for n, m in inputs.items()},
                                  cache_key=key, extra=result.extra)
    except Exception as exc:
        writer.abort()
        stage_state.update(state="failed", error=f"{type(exc).__name__}: {exc}")
        r.save()
        raise StageFailed(f"stage {stage.name} of run {r.paths.run_id} failed: {exc}") from exc
    seconds = time.perf_counter() - started
    r.manifests[stage.name] = manifest
    stage_state.update(state="done", seconds=round(seconds, 3), manifest_digest=manifest.digest,
                       rows=dict(manifest.row_counts))
    r.save()
    log.info("stage %s done in %.1fs: %s", stage.name, seconds, result.summary)
    return StageOutcome(stage.name, "ran", seconds, result.summary, dict(manifest.row_counts))


def run_pipeline(cfg: PipelineConfig, stages: Sequence[Stage] | None = None) -> list[StageOutcome]:
    """Run every enabled stage in order, skipping those whose cache key is unchanged."""
    stages = list(stages) if stages is not None else default_stages()
    paths = RunPaths(cfg.storage.root, run_id_of(cfg))
    r = _Run(cfg, paths, _load_state(paths), _LazySpark(cfg), code_version(), {})
    outcomes: list[StageOutcome] = []
    disabled: set[str] = set()
    try:
        for stage in stages:
            if not stage.enabled(cfg):
                disabled.add(stage.name)
                outcomes.append(StageOutcome(stage.name, "skipped", 0.0, "disabled by config", {}))
                continue
            # A disabled upstream (synth when inputs are configured) is simply not an input;
            # one outside this call's stage list counts if it was published earlier.
            names = {s.name for s in stages}
            for n in stage.inputs:
                if n not in names and n not in r.manifests:
                    found = _existing_manifest(paths.stage(n))
                    if found is not None:
                        r.manifests[n] = found
            missing = [n for n in stage.inputs if n not in r.manifests and n not in disabled]
            if missing:
                raise StageFailed(f"stage {stage.name} needs {missing}, which did not run")
            inputs = {name: r.manifests[name] for name in stage.inputs if name in r.manifests}
            key = cache_key(stage.name, r.version, stage.config_of(cfg),
                            {name: m.digest for name, m in inputs.items()})
            existing = _existing_manifest(paths.stage(stage.name))
            if existing is not None and existing.cache_key == key:
                log.info("stage %s is cached (key %s): nothing to do", stage.name, key[:12])
                r.manifests[stage.name] = existing
                outcomes.append(StageOutcome(stage.name, "cached", 0.0, "",
                                             dict(existing.row_counts)))
                continue
            reason = "no published output" if existing is None else "inputs or config changed"
            outcomes.append(_run_stage(r, stage, inputs, key, reason))
    finally:
        r.spark.stop()
    return outcomes
