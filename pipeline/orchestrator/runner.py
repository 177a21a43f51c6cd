"""Run the stage graph: plan, lock, cache keys, retries, atomic publication, run.json state.

A stage whose published manifest carries the cache key computed now is skipped: same
code, same config slice, same upstream manifests means the same output. Anything else
re-runs, and because downstream keys include upstream manifest digests, so does
everything after it. The whole plan is decided (and every selection problem reported)
before the first stage starts; the run holds `<run>/_LOCK` throughout, so two processes
never run the same run id at once. Before a stage writes into staging, before it publishes
and before run.json is written, the runner checks that the lock is still this process's
(`RunLock.check`): a run whose lock was taken over stops with `LockLostError` instead of
overwriting the new holder's work.

run.json records, per stage: state (`running`, `done`, `failed`, `interrupted`), the
cache key and its components (`key_parts`, which `plan` compares to say what changed),
attempts, seconds, rows, the manifest digest, the summary and the last error. A stage
found `running` by the next run was interrupted by a crash; it simply runs again (the
training stage resumes from its last committed checkpoint).

The runner carries out the plan (`plan.plan`): a stage planned "cached" is recorded as
cached with the key the plan computed, a stage planned to run with a known key runs with
that key. Only downstream of a stage that actually ran in this call is a key computed
again, from the manifests that stage just published (its inputs changed under the plan).
The runner runs the stages it is given: which stages make up `pipeline run` is decided
outside the orchestrator (pipeline.graph). Each stage that settles (ran or cached) is
reported to the tracking targets `tracking.*` configures (pipeline.tracking: MLflow,
Prometheus); a tracking problem is a warning, never a failed stage.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.config import PipelineConfig, to_dict
from pipeline.orchestrator.backends import backend_for, execute
from pipeline.orchestrator.lock import LockLostError, RunLock
from pipeline.orchestrator.plan import PlanEntry, decide, load_state, plan, run_id_of, run_paths
from pipeline.orchestrator.reports import clear_failed_reports, report_urls
from pipeline.orchestrator.retry import RetryPolicy
from pipeline.orchestrator.selection import SelectionError
from pipeline.orchestrator.stages import LazySpark, Stage, StageContext
from pipeline.storage import Manifest, RunPaths, StageWriter, code_version
from pipeline.tracking import Tracker

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
    #: the `extra` of the stage's published manifest (empty when it has none)
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: URLs of the stage's reports, main report first (see orchestrator.reports)
    reports: tuple[str, ...] = ()


class ProgressHook(Protocol):
    """Receives progress across stages (the CLI draws a rich progress bar from it)."""

    def stage_started(self, index: int, total: int, name: str, reason: str) -> None: ...

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None: ...


class _NoProgress:
    def stage_started(self, index: int, total: int, name: str, reason: str) -> None:
        return None

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None:
        return None


@dataclass
class _Run:
    """Mutable state of one `run_pipeline` call."""

    cfg: PipelineConfig
    paths: RunPaths
    state: dict[str, Any]
    spark: LazySpark
    version: str
    policy: RetryPolicy
    sleep: Callable[[float], None]
    #: raises LockLostError when the run lock is no longer ours (fencing; no-op unlocked)
    fence: Callable[[], None] = lambda: None
    #: manifests of the stages settled in this call (ran or cached), by name
    manifests: dict[str, Manifest] = field(default_factory=dict)
    #: the stages that ran (published a new manifest) in this call
    ran: set[str] = field(default_factory=set)

    def save(self) -> None:
        self.fence()
        self.state["config"] = to_dict(self.cfg, redact=True)
        self.state["code_version"] = self.version
        self.state["updated"] = time.time()
        self.paths.run_json.write_json(self.state)


def _attempt(r: _Run, stage: Stage, inputs: dict[str, Manifest], key: str) -> tuple[str, Manifest]:
    """One attempt: run into a fresh staging folder and publish (or drop it on failure)."""
    r.fence()  # the writer removes stale staging folders: only while the lock is ours
    writer = StageWriter(r.paths.stage(stage.name), stage.name)
    try:
        result = execute(stage, StageContext(r.cfg, r.paths, writer.staging, inputs, r.spark))
        r.fence()  # a lost lock stops here, before the published folder is replaced
        manifest = writer.publish(row_counts=result.row_counts, schemas=result.schemas,
                                  inputs={n: m.digest for n, m in inputs.items()},
                                  cache_key=key, extra=result.extra)
    except LockLostError:
        raise  # the staging folder may now be the new holder's business: leave it
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
            except LockLostError:
                raise  # never retried, and run.json now belongs to the new holder
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
    r.ran.add(stage.name)
    rec.pop("error", None)
    rec.update(state="done", seconds=round(seconds, 3), finished=time.time(),
               manifest_digest=manifest.digest, rows=dict(manifest.row_counts), summary=summary)
    r.save()
    clear_failed_reports(r.paths, stage.name)
    log.info("stage %s done in %.1f s (%d attempt(s)): %s", stage.name, seconds, attempt,
             summary)
    return StageOutcome(stage.name, "ran", seconds, summary, dict(manifest.row_counts), reason,
                        attempt, dict(manifest.extra),
                        report_urls(r.paths.stage(stage.name), manifest))


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


def _inputs_now(r: _Run, stage: Stage, entry: PlanEntry) -> dict[str, Manifest]:
    """The input manifests of `stage` as they stand now: those settled in this call (fresh
    from a stage that ran, or cached), else the ones the plan resolved."""
    return {n: r.manifests[n] if n in r.manifests else entry.manifests[n]
            for n in stage.inputs if n in r.manifests or n in entry.manifests}


def _carry_out(r: _Run, stage: Stage, entry: PlanEntry, index: int, total: int,
               hook: ProgressHook) -> tuple[StageOutcome, bool]:
    """Run or record one stage planned "run" or "cached"; (outcome, run.json left dirty)."""
    inputs = _inputs_now(r, stage, entry)
    key, parts = entry.key, entry.key_parts
    if key is not None and parts is not None and not any(n in r.ran for n in stage.inputs):
        decision, reason, parts = entry.decision, entry.reason, dict(parts)
    else:
        # An upstream stage ran in this call (or was to run when the plan was made): the
        # key depends on the manifest it published, so it is computed now. A re-run that
        # published the same manifest leaves this stage cached.
        decision, why, key, parts = decide(stage, r.cfg, r.version, inputs, entry.existing,
                                           entry.missing_why,
                                           r.state["stages"].get(stage.name, {}))
        # "will run: upstream X re-runs", as planned, unless it turned out cached.
        reason = entry.reason if decision == "run" and entry.key is None else why
    hook.stage_started(index, total, stage.name, reason if decision == "run" else "cached")
    existing = entry.existing
    if decision == "cached" and existing is not None:
        log.info("stage %s is cached (key %s): nothing to do", stage.name, key[:12])
        r.manifests[stage.name] = existing
        summary, changed = _record_cached(r, stage, existing, key, parts)
        if changed:  # the stage's state moved (e.g. from failed) to done
            clear_failed_reports(r.paths, stage.name)
        outcome = StageOutcome(stage.name, "cached", 0.0, summary, dict(existing.row_counts),
                               reason, 0, dict(existing.extra),
                               report_urls(r.paths.stage(stage.name), existing))
        return outcome, changed
    return _run_stage(r, stage, inputs, key, parts, reason), False


def _track(tracker: Tracker, r: _Run, stage: Stage, outcome: StageOutcome) -> None:
    """Report a settled stage to MLflow/Prometheus (pipeline.tracking); a tracking
    problem is a warning, never a failed stage."""
    try:
        manifest = r.manifests.get(stage.name)
        if manifest is not None and outcome.state in ("ran", "cached"):
            tracker.stage_settled(stage.name, outcome.state, outcome.seconds, manifest,
                                  r.paths.stage(stage.name), lambda: stage.config_of(r.cfg))
    except Exception:
        log.warning("tracking of stage %s failed; the stage itself is done", stage.name,
                    exc_info=True)


def run_pipeline(cfg: PipelineConfig, stages: Sequence[Stage], *,
                 selected: Collection[str] | None = None, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 progress: ProgressHook | None = None, lock: bool = True) -> list[StageOutcome]:
    """Run the selected (default: all) enabled stages of `stages` in order, skipping cached
    ones, as `plan` decided them.

    Raises `SelectionError` before anything runs when a selected stage cannot get its
    inputs, `NoFactoryError` when a stage to run must run as a job but has no factory
    reference, `RunLockedError` when another process runs this run id, `StageFailed` when a
    stage fails (after retries for retryable errors), `RunInterrupted` on Ctrl-C.
    """
    stages = list(stages)
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise SelectionError(f"stage name(s) {twice} appear more than once in the stage list")
    if selected is not None and (unknown := sorted(set(selected) - set(names))):
        raise SelectionError(f"unknown stage(s) {unknown}; stages: {', '.join(names)}")
    paths = run_paths(cfg)
    hook = progress or _NoProgress()
    guard = (RunLock(paths.run, cfg.orchestrator.lock_stale_s) if lock
             else contextlib.nullcontext())
    with guard:
        version = code_version()
        entries = plan(cfg, stages, selected, version)
        if blocked := [e for e in entries if e.decision == "blocked"]:
            raise SelectionError(f"run {paths.run_id} cannot start: " + "; ".join(
                f"stage {e.stage}: {e.reason}" for e in blocked))
        for stage, entry in zip(stages, entries, strict=True):
            if entry.decision == "run":
                backend_for(stage, cfg)  # NoFactoryError now, not after the stages before it
        r = _Run(cfg, paths, load_state(paths), LazySpark(cfg), version,
                 policy or RetryPolicy.from_config(cfg.orchestrator), sleep,
                 guard.check if isinstance(guard, RunLock) else (lambda: None))
        dirty = r.state.get("stage_order") != names
        r.state["stage_order"] = names
        tracker = Tracker(cfg, paths.run_id, version)
        total = sum(e.decision in ("run", "cached") for e in entries)
        outcomes: list[StageOutcome] = []
        index = 0
        try:
            for stage, entry in zip(stages, entries, strict=True):
                if entry.decision in ("disabled", "unselected"):
                    state = "skipped" if entry.decision == "disabled" else "unselected"
                    found = entry.existing if entry.decision == "unselected" else None
                    outcomes.append(StageOutcome(
                        stage.name, state, 0.0, entry.reason, {}, entry.reason, 0,
                        dict(found.extra) if found is not None else {},
                        report_urls(paths.stage(stage.name), found) if found else ()))
                    continue
                index += 1
                if stage.kind == "ray" and entry.decision == "run":
                    # Ray starts (forks) processes: the Spark stages are done, so no Py4J
                    # socket may stay open for a forked child to break (`stop_spark`).
                    r.spark.stop()
                outcome, changed = _carry_out(r, stage, entry, index, total, hook)
                # _run_stage saves run.json itself; a cached stage may leave it to save.
                dirty = (dirty or changed) if outcome.state == "cached" else False
                hook.stage_finished(index, total, outcome)
                outcomes.append(outcome)
                _track(tracker, r, stage, outcome)
        except StageFailed as exc:
            with contextlib.suppress(Exception):  # tracking never hides the failure
                rec = r.state["stages"].get(exc.stage) or {}
                tracker.stage_failed(exc.stage, float(rec.get("seconds") or 0.0))
            raise
        finally:
            r.spark.stop()
            if dirty and not (isinstance(guard, RunLock) and guard.lost is not None):
                r.save()
    return outcomes
