"""Run the stage graph: plan, lock, cache keys, retries, atomic publication, run.json state.

A stage whose published manifest carries the cache key computed now is skipped: same
code, same config slice, same upstream manifests means the same output. Anything else
re-runs, and because downstream keys include upstream manifest digests, so does
everything after it. The whole plan is decided (and every selection problem reported)
before the first stage starts; the run holds `<run>/_LOCK` throughout, so two processes
never run the same run id at once.

run.json records, per stage: state (`running`, `done`, `failed`, `interrupted`), the
cache key and its components (`key_parts`, which `plan` compares to say what changed),
attempts, seconds, rows, the manifest digest, the summary and the last error. A stage
found `running` by the next run was interrupted by a crash; it simply runs again (the
training stage resumes from its last committed checkpoint).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.config import PipelineConfig, to_dict
from pipeline.orchestrator.backends import execute
from pipeline.orchestrator.lock import RunLock
from pipeline.orchestrator.plan import (
    decide,
    load_state,
    manifests_of,
    plan,
    published,
    run_id_of,
    run_paths,
)
from pipeline.orchestrator.retry import RetryPolicy
from pipeline.orchestrator.selection import SelectionError
from pipeline.orchestrator.stages import Stage, StageContext, default_stages
from pipeline.storage import Manifest, RunPaths, StageWriter, code_version, write_json_atomic

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = ["ProgressHook", "RunInterrupted", "StageFailed", "StageOutcome", "run_id_of",
           "run_pipeline"]

_MAX_ERRORS = 5  # attempt errors kept in run.json per stage


class StageFailed(RuntimeError):
    """A stage raised; the message names the stage, the run and the cause."""

    def __init__(self, message: str, stage: str = "", run_id: str = "") -> None:
        super().__init__(message)
        self.stage = stage
        self.run_id = run_id


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a stage: run.json marks it `interrupted`; the next run resumes it."""

    def __init__(self, stage: str, run_id: str) -> None:
        super().__init__(f"stage {stage} of run {run_id} interrupted; `pipeline run` "
                         "resumes it")
        self.stage = stage
        self.run_id = run_id


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in this call."""

    name: str
    state: str  # "ran" | "cached" | "skipped" (disabled) | "unselected"
    seconds: float
    summary: str
    rows: dict[str, int]
    reason: str = ""
    attempts: int = 0


class ProgressHook(Protocol):
    """Receives progress across stages (the CLI draws a rich progress bar from it)."""

    def stage_started(self, index: int, total: int, name: str, reason: str) -> None: ...

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None: ...


class _NoProgress:
    def stage_started(self, index: int, total: int, name: str, reason: str) -> None:
        return None

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None:
        return None


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
    policy: RetryPolicy
    sleep: Callable[[float], None]
    manifests: dict[str, Manifest] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.cfg.storage.options)

    def save(self) -> None:
        self.state["config"] = to_dict(self.cfg, redact=True)
        self.state["code_version"] = self.version
        self.state["updated"] = time.time()
        write_json_atomic(self.paths.run_json, self.state, self.options)


def _attempt(r: _Run, stage: Stage, inputs: dict[str, Manifest], key: str) -> tuple[str, Manifest]:
    """One attempt: run into a fresh staging folder and publish (or drop it on failure)."""
    writer = StageWriter(r.paths.stage(stage.name), stage.name, r.options)
    try:
        result = execute(stage, StageContext(r.cfg, r.paths, writer.staging_url, inputs,
                                             r.spark))
        manifest = writer.publish(row_counts=result.row_counts, schemas=result.schemas,
                                  inputs={n: m.digest for n, m in inputs.items()},
                                  cache_key=key, extra=result.extra)
    except BaseException:
        writer.abort()
        raise
    return result.summary, manifest


def _run_stage(r: _Run, stage: Stage, inputs: dict[str, Manifest], key: str,
               parts: dict[str, Any], reason: str) -> StageOutcome:
    """Run one stage with retries; record every state change in run.json."""
    log.info("stage %s runs: %s", stage.name, reason)
    rec: dict[str, Any] = {"state": "running", "cache_key": key, "key_parts": parts,
                           "reason": reason, "started": time.time(), "attempts": 0}
    r.state["stages"][stage.name] = rec
    r.save()
    started = time.perf_counter()
    attempt = 0
    try:
        while True:
            attempt += 1
            rec["attempts"] = attempt
            try:
                summary, manifest = _attempt(r, stage, inputs, key)
                break
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}"
                rec["errors"] = [*rec.get("errors", []), cause[:500]][-_MAX_ERRORS:]
                decision = r.policy.decide(stage.name, attempt, exc)
                if not decision.retry:
                    rec.update(state="failed", error=cause[:2000],
                               seconds=round(time.perf_counter() - started, 3))
                    r.save()
                    tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise StageFailed(f"stage {stage.name} of run {r.paths.run_id} failed"
                                      f"{tries}: {cause}", stage.name, r.paths.run_id) from exc
                r.save()
                r.sleep(decision.delay_s)
    except KeyboardInterrupt:
        rec.update(state="interrupted", seconds=round(time.perf_counter() - started, 3))
        r.save()
        log.warning("stage %s interrupted after %.1f s (attempt %d)", stage.name,
                    time.perf_counter() - started, attempt)
        raise RunInterrupted(stage.name, r.paths.run_id) from None
    seconds = time.perf_counter() - started
    r.manifests[stage.name] = manifest
    rec.pop("error", None)
    rec.update(state="done", seconds=round(seconds, 3), finished=time.time(),
               manifest_digest=manifest.digest, rows=dict(manifest.row_counts), summary=summary)
    r.save()
    log.info("stage %s done in %.1f s (%d attempt(s)): %s", stage.name, seconds, attempt,
             summary)
    return StageOutcome(stage.name, "ran", seconds, summary, dict(manifest.row_counts), reason,
                        attempt)


def _record_cached(r: _Run, stage: Stage, manifest: Manifest, key: str,
                   parts: dict[str, Any]) -> tuple[str, bool]:
    """Note a cached stage as done in run.json; (its recorded summary, whether it changed)."""
    old = r.state["stages"].get(stage.name) or {}
    if old.get("state") == "done" and old.get("manifest_digest") == manifest.digest:
        return str(old.get("summary", "")), False
    new: dict[str, Any] = {"state": "done", "cache_key": key, "key_parts": parts,
                           "manifest_digest": manifest.digest, "rows": dict(manifest.row_counts)}
    if old.get("manifest_digest") == manifest.digest:
        new.update({k: old[k] for k in ("seconds", "summary", "attempts", "finished")
                    if k in old})
    r.state["stages"][stage.name] = new
    return str(new.get("summary", "")), True


def _load_outside(r: _Run, stage: Stage, in_list: set[str]) -> None:
    """Inputs that are not stages of this call count when they were published earlier."""
    for n in stage.inputs:
        if n not in in_list and n not in r.manifests:
            found, _ = published(r.paths.stage(n), r.options)
            if found is not None:
                r.manifests[n] = found


def run_pipeline(cfg: PipelineConfig, stages: Sequence[Stage] | None = None, *,
                 selected: Collection[str] | None = None, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 progress: ProgressHook | None = None, lock: bool = True) -> list[StageOutcome]:
    """Run the selected (default: all) enabled stages in order, skipping cached ones.

    Raises `SelectionError` before anything runs when a selected stage cannot get its
    inputs, `RunLockedError` when another process runs this run id, `StageFailed` when a
    stage fails (after retries for retryable errors), `RunInterrupted` on Ctrl-C.
    """
    stages = list(stages) if stages is not None else default_stages()
    names = [s.name for s in stages]
    if selected is not None and (unknown := sorted(set(selected) - set(names))):
        raise SelectionError(f"unknown stage(s) {unknown}; stages: {', '.join(names)}")
    paths = run_paths(cfg)
    hook = progress or _NoProgress()
    guard = (RunLock(paths.run_url, cfg.orchestrator.lock_stale_s,
                     options=dict(cfg.storage.options)) if lock else contextlib.nullcontext())
    with guard:
        version = code_version()
        entries = plan(cfg, stages, selected, version)
        if blocked := [e for e in entries if e.decision == "blocked"]:
            raise SelectionError(f"run {paths.run_id} cannot start: " + "; ".join(
                f"stage {e.stage}: {e.reason}" for e in blocked))
        r = _Run(cfg, paths, load_state(paths, dict(cfg.storage.options)), _LazySpark(cfg),
                 version, policy or RetryPolicy.from_config(cfg.orchestrator), sleep)
        dirty = r.state.get("stage_order") != names
        r.state["stage_order"] = names
        total = sum(e.decision in ("run", "cached") for e in entries)
        outcomes: list[StageOutcome] = []
        index = 0
        try:
            for stage, entry in zip(stages, entries, strict=True):
                if entry.decision in ("disabled", "unselected"):
                    found, _ = published(paths.stage(stage.name), r.options)
                    if found is not None and entry.decision == "unselected":
                        r.manifests[stage.name] = found
                    state = "skipped" if entry.decision == "disabled" else "unselected"
                    outcomes.append(StageOutcome(stage.name, state, 0.0, entry.reason, {},
                                                 entry.reason))
                    continue
                index += 1
                _load_outside(r, stage, set(names))
                inputs = manifests_of(stage, r.manifests)
                existing, why = published(paths.stage(stage.name), r.options)
                decision, reason, key, parts = decide(stage, cfg, version, inputs, existing, why,
                                                      r.state["stages"].get(stage.name, {}))
                if decision == "run" and entry.key is None and entry.decision == "run":
                    reason = entry.reason  # "will run: upstream X re-runs", as planned
                hook.stage_started(index, total, stage.name,
                                   reason if decision == "run" else "cached")
                if decision == "cached" and existing is not None:
                    log.info("stage %s is cached (key %s): nothing to do", stage.name, key[:12])
                    r.manifests[stage.name] = existing
                    summary, changed = _record_cached(r, stage, existing, key, parts)
                    dirty = dirty or changed
                    outcome = StageOutcome(stage.name, "cached", 0.0, summary,
                                           dict(existing.row_counts), reason)
                else:
                    outcome = _run_stage(r, stage, inputs, key, parts, reason)
                    dirty = False  # _run_stage saved
                hook.stage_finished(index, total, outcome)
                outcomes.append(outcome)
        finally:
            r.spark.stop()
            if dirty:
                r.save()
    return outcomes
