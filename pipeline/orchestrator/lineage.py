"""`pipeline lineage RUN`: for each metric, the chain of digests back to the raw files.

    metric -> checkpoint (URL, model.pt sha256 from checkpoint.json)
           -> data (the dedup manifest's content digest the checkpoint was trained on,
              checked against the published dedup/<task> manifest)
           -> dedup manifest digest -> ingest manifest digest (from the dedup manifest's
              inputs, checked against the published ingest manifest)
           -> raw files (ingest's recorded raw file list, or the synth manifest's files)

The metrics come from `evaluate/<task>` manifests (extra: metrics, checkpoint,
checkpoint_digest, data_digest); without an evaluate stage, from `train/<task>` (extra:
best_checkpoint, final_metrics). Every link that does not match what is published now is
reported as a problem: the metric then does not describe the data in this run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.orchestrator.plan import published
from pipeline.storage import Location, Manifest, RunPaths, sha256_bytes

# pipeline.train.checkpoint.META_FILE / MODEL_FILE; not imported, as that imports torch.
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_MODEL = "model.pt"


@dataclass(frozen=True)
class Link:
    """One step of a chain: what it is, where, and its digest."""

    kind: str  # checkpoint | data | dedup | ingest | synth
    ref: str  # URL or stage name
    digest: str
    detail: str = ""


@dataclass(frozen=True)
class Chain:
    """The lineage of one task's metrics."""

    task: str
    source: str  # the stage the metrics come from
    metrics: Mapping[str, Any]
    links: tuple[Link, ...]
    raw_files: tuple[Mapping[str, Any], ...] = ()
    raw_note: str = ""
    problems: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "source": self.source, "metrics": dict(self.metrics),
                "links": [asdict(x) for x in self.links],
                "raw_files": [dict(f) for f in self.raw_files], "raw_note": self.raw_note,
                "problems": list(self.problems), "ok": not self.problems}


def _checkpoint(folder: Location) -> tuple[dict[str, Any], str]:
    """(checkpoint.json contents, sha256 of its bytes); ({}, "") when unreadable."""
    try:
        data = (folder / CHECKPOINT_META).read_bytes()
        return json.loads(data.decode()), sha256_bytes(data)
    except (FileNotFoundError, ValueError):
        return {}, ""


def _raw_files(run: RunPaths, task: str, ingest: Manifest
               ) -> tuple[list[dict[str, Any]], str, list[str]]:
    """(raw files with sha256, a note, problems) for the ingest stage of `task`."""
    recorded = ingest.extra.get("raw_files")
    if isinstance(recorded, list) and recorded:
        return [dict(f) for f in recorded], "recorded by ingest", []
    if "synth" in ingest.inputs:
        synth, why = published(run.stage("synth"))
        if synth is None:
            return [], f"synth: {why}", [f"ingest/{task} read sample data whose synth stage "
                                         f"is gone ({why})"]
        problems = []
        if synth.digest != ingest.inputs["synth"]:
            problems.append(f"MISMATCH: ingest/{task} read synth manifest "
                            f"{ingest.inputs['synth'][:12]}, published synth is "
                            f"{synth.digest[:12]}")
        files = [{"url": (run.stage("synth") / f.path).url, "size": f.size,
                  "sha256": f.sha256} for f in synth.files if f.path.startswith(task + "/")]
        return files, f"sample data from synth manifest {synth.digest[:12]}", problems
    count = ingest.extra.get("raw_file_count")
    digest = ingest.extra.get("raw_digest")
    if digest:
        return [], f"{count or '?'} raw files, listing digest {digest}", []
    return [], "raw files not recorded by this ingest manifest", []


def _chain(run: RunPaths, task: str, source: str, m: Manifest) -> Chain:
    extra = m.extra
    metrics = extra.get("metrics") or extra.get("final_metrics") or {}
    problems: list[str] = []
    links: list[Link] = []
    ckpt_url = str(extra.get("checkpoint") or extra.get("best_checkpoint") or "")
    meta, meta_sha = _checkpoint(run.root.at(ckpt_url)) if ckpt_url else ({}, "")
    model_sha = str((meta.get("files") or {}).get(CHECKPOINT_MODEL, {}).get("sha256", ""))
    if not ckpt_url:
        problems.append(f"{source} records no checkpoint")
    elif not meta:
        problems.append(f"checkpoint {ckpt_url} has no readable {CHECKPOINT_META}")
    links.append(Link("checkpoint", ckpt_url, model_sha,
                      f"step {meta.get('step', '?')}, {CHECKPOINT_META} sha256 {meta_sha[:12]}"))
    claimed = extra.get("checkpoint_digest")
    if claimed and meta and claimed not in (model_sha, meta_sha):
        problems.append(f"MISMATCH: {source} scored checkpoint {str(claimed)[:12]}, but "
                        f"{ckpt_url} holds model {model_sha[:12]}")
    trained_on = str(meta.get("data_digest") or extra.get("data_digest") or "")
    dedup, why = published(run.stage(f"dedup/{task}"))
    links.append(Link("data", f"dedup/{task}", trained_on, "content digest trained on"))
    scored_on = extra.get("data_digest")
    if scored_on and trained_on and scored_on != trained_on:
        problems.append(f"MISMATCH: {source} records data {str(scored_on)[:12]}, the "
                        f"checkpoint was trained on {trained_on[:12]}")
    if dedup is None:
        problems.append(f"dedup/{task}: {why}")
        return Chain(task, source, metrics, tuple(links), problems=tuple(problems))
    if trained_on != dedup.content_digest:
        problems.append(f"MISMATCH: the checkpoint was trained on data {trained_on[:12]}, but "
                        f"the published dedup/{task} holds {dedup.content_digest[:12]}")
    links.append(Link("dedup", f"dedup/{task}", dedup.digest,
                      f"content {dedup.content_digest[:12]}, rows {dict(dedup.row_counts)}"))
    ingest_digest = dedup.inputs.get(f"ingest/{task}", "")
    ingest, why = published(run.stage(f"ingest/{task}"))
    links.append(Link("ingest", f"ingest/{task}", ingest_digest,
                      f"rows {dict(ingest.row_counts)}" if ingest is not None else why))
    if ingest is None:
        problems.append(f"ingest/{task}: {why}")
        return Chain(task, source, metrics, tuple(links), problems=tuple(problems))
    if ingest.digest != ingest_digest:
        problems.append(f"MISMATCH: dedup/{task} was made from ingest manifest "
                        f"{ingest_digest[:12]}, published ingest/{task} is {ingest.digest[:12]}")
    raw, note, raw_problems = _raw_files(run, task, ingest)
    return Chain(task, source, metrics, tuple(links), tuple(raw), note,
                 tuple(problems + raw_problems))


def lineage(root: Location, run_id: str) -> list[Chain]:
    """One chain per task that has an evaluate (or else a train) manifest in the run."""
    run = RunPaths(root, run_id)
    state = run.run_json.read_json()  # FileNotFoundError: no such run
    names = list(state.get("stage_order") or []) + sorted(state.get("stages") or {})
    tasks = list(dict.fromkeys(n.split("/", 1)[1] for n in names
                               if n.startswith(("evaluate/", "train/"))))
    chains = []
    for task in tasks:
        for source in (f"evaluate/{task}", f"train/{task}"):
            manifest, _ = published(run.stage(source))
            if manifest is not None:
                chains.append(_chain(run, task, source, manifest))
                break
    return chains
