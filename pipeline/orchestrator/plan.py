"""What a run would do, stage by stage, and why: `pipeline plan` / `pipeline run --dry-run`.

For each stage the plan says run / cached / disabled / blocked / unselected, a reason, and
the sizes of its inputs (files, bytes, rows, from the input manifests). To say *which*
part of the cache key changed, the runner records the key's components per stage in
run.json (`key_parts`: code version, config digest, input manifest digests); the
published manifest itself carries the code version and the input digests, so a run.json
from before this was recorded still gets the code and input reasons.

Downstream of a stage that will run the cache key cannot be known yet (it depends on the
manifest that stage will publish), so such a stage "will run: upstream X re-runs".

The plan is also what the runner carries out: each `PlanEntry` holds the input manifests
it resolved (published stages of this call, and inputs published earlier that are not
stages of this call), the published output it found, and the cache key and key parts it
computed, so the runner decides nothing twice.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pipeline.config import PipelineConfig
from pipeline.orchestrator.stages import Stage
from pipeline.storage import (
    Location,
    Manifest,
    ManifestMismatchError,
    MissingManifestError,
    RunPaths,
    cache_key,
    code_version,
    digest_of,
    read_manifest,
)

Decision = Literal["run", "cached", "disabled", "blocked", "unselected"]
INTERRUPTED_STATES = ("running", "interrupted")


def run_id_of(cfg: PipelineConfig) -> str:
    """The run id a configuration selects (`run_id`, else 'local')."""
    return cfg.run_id or "local"


def run_paths(cfg: PipelineConfig) -> RunPaths:
    return RunPaths(cfg.storage.location, run_id_of(cfg))


def load_state(run: RunPaths) -> dict[str, Any]:
    """run.json, or an empty state for a run that never started."""
    try:
        state = run.run_json.read_json()
    except FileNotFoundError:
        state = None
    if not isinstance(state, dict):
        state = {"run_id": run.run_id}
    state.setdefault("stages", {})
    return state


def published(stage: Location) -> tuple[Manifest | None, str]:
    """The published manifest (or None) and, when None, why: missing or corrupt."""
    try:
        return read_manifest(stage), ""
    except MissingManifestError:
        return None, "no published output"
    except ManifestMismatchError as exc:
        return None, f"published manifest is corrupt ({exc})"


@dataclass(frozen=True)
class InputSize:
    """One input of a stage, from its manifest (None = not published yet: it will run)."""

    name: str
    files: int | None = None
    bytes: int | None = None
    rows: int | None = None

    @classmethod
    def of(cls, name: str, manifest: Manifest) -> InputSize:
        rows = [f.rows for f in manifest.files if f.rows is not None]
        return cls(name, len(manifest.files), sum(f.size for f in manifest.files),
                   sum(rows) if rows else None)


@dataclass(frozen=True)
class PlanEntry:
    """The decision for one stage, and what the runner needs to carry it out."""

    stage: str
    decision: Decision
    reason: str
    inputs: tuple[InputSize, ...] = ()
    key: str | None = None  # None while an upstream stage is still to run
    #: the components of `key` (code, config digest, input digests); None with `key`
    key_parts: Mapping[str, Any] | None = field(default=None, compare=False)
    #: the input manifests resolved at planning time (inputs of this call that are cached
    #: or not selected, and inputs published earlier that are not stages of this call);
    #: an input that will run, or is disabled, is absent
    manifests: Mapping[str, Manifest] = field(default_factory=dict, compare=False)
    #: the stage's own published output when the plan was made (None: none, or corrupt)
    existing: Manifest | None = field(default=None, compare=False)
    #: why `existing` is None ("no published output", "published manifest is corrupt...")
    missing_why: str = field(default="", compare=False)

    @property
    def input_bytes(self) -> int | None:
        sizes = [i.bytes for i in self.inputs]
        return None if any(b is None for b in sizes) else sum(b or 0 for b in sizes)

    @property
    def input_rows(self) -> int | None:
        rows = [i.rows for i in self.inputs if i.rows is not None]
        return sum(rows) if rows else None

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "decision": self.decision, "reason": self.reason,
                "key": self.key, "input_bytes": self.input_bytes, "input_rows": self.input_rows,
                "inputs": [i.__dict__ for i in self.inputs]}


def key_of(stage: Stage, cfg: PipelineConfig, version: str,
           inputs: Mapping[str, Manifest]) -> tuple[str, dict[str, Any]]:
    """(cache key, its components) of `stage` over the given input manifests."""
    config = stage.config_of(cfg)
    digests = {n: m.digest for n, m in sorted(inputs.items())}
    parts = {"code": version, "config": digest_of(config), "inputs": digests}
    return cache_key(stage.name, version, config, digests), parts


def _changes(existing: Manifest, parts: Mapping[str, Any],
             recorded: Mapping[str, Any]) -> list[str]:
    changes = []
    if existing.code_version and existing.code_version != parts["code"]:
        changes.append(f"code version changed ({existing.code_version} -> {parts['code']})")
    old_config = recorded.get("key_parts", {}).get("config")
    if old_config is not None and old_config != parts["config"]:
        changes.append("config changed")
    now_inputs: Mapping[str, str] = parts["inputs"]
    for name in sorted(set(existing.inputs) | set(now_inputs)):
        if name not in now_inputs:
            changes.append(f"input {name} removed")
        elif name not in existing.inputs:
            changes.append(f"input {name} added")
        elif existing.inputs[name] != now_inputs[name]:
            changes.append(f"input {name} changed")
    if not changes:
        # Name, code and inputs are the same, so by elimination the config differs.
        changes.append("config changed")
    return changes


def decide(stage: Stage, cfg: PipelineConfig, version: str, inputs: Mapping[str, Manifest],
           existing: Manifest | None, missing_why: str, recorded: Mapping[str, Any]
           ) -> tuple[Decision, str, str, dict[str, Any]]:
    """(run|cached, reason, cache key, key parts) of one stage whose inputs are known."""
    key, parts = key_of(stage, cfg, version, inputs)
    if existing is not None and existing.cache_key == key:
        return "cached", "up to date (cache key matches the published manifest)", key, parts
    state = recorded.get("state")
    if state in INTERRUPTED_STATES:
        reason = "running stage interrupted (will resume)"
    elif state == "failed" and existing is None:
        reason = f"previous attempt failed ({recorded.get('error', 'unknown error')})"
    elif existing is None:
        reason = missing_why or "no published output"
    else:
        reason = "; ".join(_changes(existing, parts, recorded))
    return "run", reason, key, parts


def plan(cfg: PipelineConfig, stages: Sequence[Stage], selected: Collection[str] | None = None,
         version: str | None = None) -> list[PlanEntry]:
    """Decide every stage of `stages` without running anything (reads run.json and
    manifests only). `selected`: the names to run (None: all); the others are
    "unselected" and their published outputs feed the selected ones."""
    run = run_paths(cfg)
    state = load_state(run)
    version = version or code_version()
    in_list = {s.name for s in stages}
    manifests: dict[str, Manifest] = {}
    disabled: set[str] = set()
    will_run: list[str] = []
    blocked: set[str] = set()
    entries: list[PlanEntry] = []
    for stage in stages:
        name = stage.name
        if not stage.enabled(cfg):
            disabled.add(name)
            entries.append(PlanEntry(name, "disabled", stage.disabled_reason(cfg)))
            continue
        existing, missing_why = published(run.stage(name))
        sizes: list[InputSize] = []
        upstream_runs = [n for n in stage.inputs if n in will_run]
        problems: list[str] = []
        for n in stage.inputs:
            if n in disabled or n in will_run:
                if n in will_run:
                    sizes.append(InputSize(n))
                continue
            if n in blocked:
                problems.append(f"upstream {n} is blocked")
                continue
            if n not in manifests and n not in in_list:
                found, _ = published(run.stage(n))
                if found is not None:
                    manifests[n] = found
            if n in manifests:
                sizes.append(InputSize.of(n, manifests[n]))
            elif n in in_list:
                problems.append(f"input {n} was never published: select it too "
                                f"(e.g. --from {n})")
            else:
                problems.append(f"input {n} was never published and is not a stage of "
                                "this run")
        resolved = manifests_of(stage, manifests)
        recorded = state["stages"].get(name, {})
        chosen = selected is None or name in selected
        base = PlanEntry(name, "blocked", "", tuple(sizes), manifests=resolved,
                         existing=existing, missing_why=missing_why)
        if not chosen:
            if existing is not None:
                manifests[name] = existing
            why = "not selected"
            if existing is None:
                why += "; never published"
            elif upstream_runs:
                why += f"; its published output predates upstream {upstream_runs[0]}, which re-runs"
            elif not problems:
                try:
                    decision, reason, _, _ = decide(stage, cfg, version, resolved, existing,
                                                    missing_why, recorded)
                except Exception as exc:  # e.g. a secret only the unselected stage needs
                    decision, reason = "run", f"its cache key cannot be computed here: {exc}"
                why += ("; published output is up to date" if decision == "cached" else
                        f"; published output is out of date ({reason}) but is used as is")
            entries.append(replace(base, decision="unselected", reason=why))
            continue
        if problems:
            blocked.add(name)
            entries.append(replace(base, reason="; ".join(problems)))
        elif upstream_runs:
            will_run.append(name)
            shown = ", ".join(upstream_runs[:2]) + (f" and {len(upstream_runs) - 2} more"
                                                    if len(upstream_runs) > 2 else "")
            entries.append(replace(base, decision="run", reason=f"will run: upstream {shown}"
                                   f" re-run{'s' if len(upstream_runs) == 1 else ''}"))
        else:
            decision, reason, key, parts = decide(stage, cfg, version, resolved, existing,
                                                  missing_why, recorded)
            if decision == "cached" and existing is not None:
                manifests[name] = existing
            else:
                will_run.append(name)
            entries.append(replace(base, decision=decision, reason=reason, key=key,
                                   key_parts=parts))
    return entries


def manifests_of(stage: Stage, manifests: Mapping[str, Manifest]) -> dict[str, Manifest]:
    """The input manifests of `stage` among the known ones (disabled inputs are absent)."""
    return {n: manifests[n] for n in stage.inputs if n in manifests}
