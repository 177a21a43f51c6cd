"""The run summary: `reports/summary` renders `index.html` + `summary.json` over a run.

One page that answers "what did this run do": every stage with its state, time and key
row counts; per modality the data figures (input = kept + duplicates + quarantined, rules,
splits, gates) from the dedup manifests; per task the training curves (train and val loss
per epoch, from `train/<task>/result.json`) and the evaluation headline metrics (from the
`evaluate/<task>` manifests), with relative links to the detailed reports: each stage's
main report, a file of its own stage folder (orchestrator.reports), e.g.
`../dedup/dedup.html`, `../../train/<task>/result.json`,
`../../evaluate/<task>/report.html`.

Its inputs come from the modality registry: `dedup/<m>` of every registered modality,
`train/<m>` of those that train a model, `evaluate/<m>` of those that evaluate it. A
modality the run does not select has those stages disabled, and they are left out.

The work is split so that only the edges do I/O: `collect_summary` reads run.json and the
result files the manifests list, `summary_figures` turns those into one JSON-ready dict,
and `render_summary_html` turns that dict into a self-contained page (inline SVG, no
scripts, no external requests). Any subset of inputs works: a disabled or not yet wired
stage is simply absent, and its section says so.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline import html as H
from pipeline.jsonutil import json_clean
from pipeline.orchestrator.reports import relative_link, report_files
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import (
    Location,
    Manifest,
    ManifestMismatchError,
    MissingManifestError,
    RunPaths,
    read_manifest,
)
from pipeline.train import UNVALIDATED_LOSS
from pipeline.train.stage import read_train_result

log = logging.getLogger(__name__)

STAGE_NAME = "reports/summary"
DEDUP_REPORT = "reports/dedup"
INDEX_FILE = "index.html"
SUMMARY_FILE = "summary.json"
DATA_FIGURES = ("input", "kept", "duplicates", "quarantined")
#: row counts shown in the stage table, in this order, when a stage has them
_GROUP_ORDER = ("synth", "ingest", "dedup", "reports/dedup", "train", "evaluate", "reports")
_KEY_ROWS = ("input", "curated", "kept", "duplicates", "quarantined", "epochs", "rows",
             "records", "examples")


def _number(value: Any) -> float | None:
    """A finite float, or None (NaN, inf, placeholders and non-numbers are not figures)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    # UNVALIDATED_LOSS marks checkpoints taken before validation: a placeholder, no loss.
    return v if math.isfinite(v) and abs(v) < UNVALIDATED_LOSS else None


def _key_rows(rows: Mapping[str, Any]) -> dict[str, int]:
    picked = {k: int(rows[k]) for k in _KEY_ROWS if isinstance(rows.get(k), int)}
    if not picked:  # stages with only dotted counts (synth's "text.records", ...)
        picked = {k: int(v) for k, v in sorted(rows.items())[:4] if isinstance(v, int)}
    return picked


def _stage_order(name: str) -> tuple[int, str]:
    """Graph order by stage group, then name: stable whatever run.json recorded when
    (cached stages keep no start time)."""
    for rank, group in enumerate(_GROUP_ORDER):
        if name == group or name.startswith(group + "/"):
            return rank, name
    return len(_GROUP_ORDER), name


def stage_rows(run_state: Mapping[str, Any], inputs: Mapping[str, Manifest],
               exclude: Sequence[str] = (STAGE_NAME,)) -> list[dict[str, Any]]:
    """One row per stage recorded in run.json or given as an input, in graph order."""
    recorded: Mapping[str, Any] = run_state.get("stages", {}) or {}
    names = sorted((set(recorded) | set(inputs)) - set(exclude), key=_stage_order)
    out = []
    for name in names:
        state = recorded.get(name, {})
        manifest = inputs.get(name)
        rows = dict(manifest.row_counts) if manifest is not None else dict(state.get("rows", {}))
        digest = manifest.digest if manifest is not None else state.get("manifest_digest")
        out.append({"stage": name, "state": state.get("state", "published"),
                    "seconds": _number(state.get("seconds")), "rows": _key_rows(rows),
                    "summary": state.get("summary") or "", "manifest": (digest or "")[:12],
                    "error": state.get("error")})
    return out


def data_figures(manifest: Manifest) -> dict[str, Any]:
    """Input/kept/duplicates/quarantined of one `dedup/<m>` manifest, with rules and splits.

    The quality figures' `rows` count from the raw records (ingest quarantine included),
    so they reconcile with the raw input; the stage's own row counts start at the curated
    rows and stand in when a manifest has no quality figures."""
    quality: Mapping[str, Any] = manifest.extra.get("quality", {}) or {}
    rows = dict(quality.get("rows", {}) or {})
    counts = manifest.row_counts
    figures = {
        "input": int(rows.get("input", counts.get("input", 0))),
        "kept": int(rows.get("curated", counts.get("kept", 0))),
        "duplicates": int(rows.get("duplicates", counts.get("duplicates", 0))),
        "quarantined": int(rows.get("quarantined", counts.get("quarantined", 0))),
    }

    def prefix(p: str) -> dict[str, int]:
        return {k[len(p):]: int(v) for k, v in sorted(counts.items()) if k.startswith(p)}

    gates = list(manifest.extra.get("gates", []) or [])
    return {
        **figures,
        "reconciles": figures["input"] == sum(figures[k] for k in DATA_FIGURES[1:]),
        "duplicates_by_rule": prefix("duplicates."),
        "splits": prefix("split."),
        "quarantine_rate_by_reason": dict(quality.get("quarantine_rate", {})
                                          .get("by_reason", {}) or {}),
        "gates": {"passed": sum(bool(g.get("passed")) for g in gates),
                  "failed": sum(not g.get("passed") for g in gates)},
    }


def training_figures(task: str, manifest: Manifest, result: Mapping[str, Any]) -> dict[str, Any]:
    """Per-epoch losses and the best checkpoint of one task from its `result.json`."""
    history = result.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, Mapping) for h in history):
        raise ValueError(f"train/{task}: result.json 'history' must be a list of per-epoch "
                         f"objects, got {type(history).__name__}")
    epochs = [_number(h.get("epoch")) or float(i + 1) for i, h in enumerate(history)]
    return {
        "epochs": epochs,
        "train_loss": [_number(h.get("train_loss")) for h in history],
        "val_loss": [_number(h.get("val_loss")) for h in history],
        "best_val_loss": _number(result.get("best_val_loss",
                                            manifest.extra.get("best_val_loss"))),
        "best_checkpoint": result.get("best_checkpoint", manifest.extra.get("best_checkpoint")),
    }


def evaluation_figures(manifest: Manifest) -> dict[str, Any]:
    """The headline metrics and the scored checkpoint of one `evaluate/<task>` manifest."""
    metrics = manifest.extra.get("metrics", {}) or {}
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{manifest.stage}: extra['metrics'] must map names to numbers, "
                         f"got {type(metrics).__name__}")
    gates = list(manifest.extra.get("gates", []) or [])
    return {"metrics": {str(k): _number(v) for k, v in sorted(metrics.items())},
            "gates": {"passed": sum(bool(g.get("passed")) for g in gates),
                      "failed": sum(not g.get("passed") for g in gates)},
            "checkpoint": manifest.extra.get("checkpoint"),
            "checkpoint_digest": manifest.extra.get("checkpoint_digest")}


def _main_report(manifest: Manifest | None) -> str | None:
    """The link from the summary page to the main report of a published stage, if any."""
    files = report_files(manifest)
    if manifest is None or not files:
        return None
    return relative_link(STAGE_NAME, manifest.stage, files[0])


def report_links(inputs: Mapping[str, Manifest],
                 dedup_report: Manifest | None = None) -> dict[str, str]:
    """Relative links from the summary page to the dedup report and to the main report of
    each train and evaluate stage in `inputs`, in page order."""
    links: dict[str, str] = {}
    if (href := _main_report(dedup_report)) is not None:
        links["dedup report"] = href
    by_kind = _by_kind(inputs)
    for t in sorted(set(by_kind["train"]) | set(by_kind["evaluate"])):
        for kind, label in (("train", "training report"), ("evaluate", "evaluation report")):
            if (href := _main_report(by_kind[kind].get(t))) is not None:
                links[f"{label} {t}"] = href
    return links


def _by_kind(inputs: Mapping[str, Manifest]) -> dict[str, dict[str, Manifest]]:
    by_kind: dict[str, dict[str, Manifest]] = {"dedup": {}, "train": {}, "evaluate": {}}
    for name, manifest in inputs.items():
        kind, _, item = name.partition("/")
        if kind in by_kind and item:
            by_kind[kind][item] = manifest
    return by_kind


def summary_figures(run_id: str, run_state: Mapping[str, Any], inputs: Mapping[str, Manifest],
                    train_results: Mapping[str, Mapping[str, Any]],
                    links: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything the page shows, as one JSON-ready dict (the content of `summary.json`).

    `inputs` are the published `dedup/*`, `train/*` and `evaluate/*` manifests present;
    `train_results` the parsed `result.json` of each task in `inputs`' train stages;
    `links` the page's links to detailed reports (`report_links`)."""
    by_kind = _by_kind(inputs)
    missing = sorted(set(by_kind["train"]) - set(train_results))
    if missing:
        raise ValueError(f"no result.json given for trained task(s) {missing}")
    return json_clean({
        "run_id": run_id,
        "stages": stage_rows(run_state, inputs),
        "data": {m: data_figures(v) for m, v in sorted(by_kind["dedup"].items())},
        "training": {t: training_figures(t, v, train_results[t])
                     for t, v in sorted(by_kind["train"].items())},
        "evaluation": {t: evaluation_figures(v) for t, v in sorted(by_kind["evaluate"].items())},
        "links": dict(links or {}),
    })


def _shown(value: Any) -> Any:
    """A figure for the page: an undefined one (null: NaN, inf, not measured) reads n/a."""
    return "n/a" if value is None else value


def _link(href: str, text: str) -> H.Html:
    return H.Html(f'<a href="{H.esc(href)}">{H.esc(text)}</a>')


def _stage_table(stages: Sequence[Mapping[str, Any]]) -> H.Html:
    rows = []
    for s in stages:
        state = str(s.get("state"))
        css = "fail" if state == "failed" else "pass" if state == "done" else ""
        rows.append({
            "stage": s.get("stage"),
            "state": H.Html(f'<span class="{css}">{H.esc(state)}</span>') if css else state,
            "seconds": _shown(s.get("seconds")),
            "rows": ", ".join(f"{k} {H.fmt(v)}" for k, v in s.get("rows", {}).items()),
            "summary": s.get("summary") or "", "manifest": s.get("manifest"),
            "error": s.get("error") or ""})
    return H.table(rows) if rows else H.paragraph("no stage recorded yet", "muted")


def _data_section(data: Mapping[str, Mapping[str, Any]]) -> H.Html:
    if not data:
        return H.section("Data", "no dedup stage in this run")
    rows = [{"modality": m, **{k: d[k] for k in DATA_FIGURES},
             "reconciles": "yes" if d["reconciles"] else "NO",
             "gates passed": d["gates"]["passed"], "gates failed": d["gates"]["failed"]}
            for m, d in data.items()]
    parts: list[Any] = [H.table(rows)]
    for m, d in data.items():
        parts.append(H.bar_chart(list(DATA_FIGURES), [d[k] for k in DATA_FIGURES],
                                 title=f"{m}: records", y_label="rows", width=420))
        detail = {**{f"duplicates {k}": v for k, v in d["duplicates_by_rule"].items()},
                  **{f"split {k}": v for k, v in d["splits"].items()},
                  **{f"quarantine rate {k}": v
                     for k, v in d["quarantine_rate_by_reason"].items()}}
        if detail:
            parts.append(H.key_values(detail, f"{m}: rules, splits, quarantine reasons"))
    return H.section("Data", *parts)


def _training_section(training: Mapping[str, Mapping[str, Any]]) -> H.Html:
    if not training:
        return H.section("Training", "no training stage in this run")
    parts: list[Any] = []
    for t, tr in training.items():
        series = {}
        for key in ("train_loss", "val_loss"):
            pts = [(x, y) for x, y in zip(tr["epochs"], tr[key], strict=True) if y is not None]
            if pts:
                series[key.replace("_", " ")] = ([p[0] for p in pts], [p[1] for p in pts])
        if series:
            parts.append(H.line_chart(series, title=f"{t}: loss per epoch", x_label="epoch",
                                      y_label="loss"))
        else:
            parts.append(H.paragraph(f"{t}: no finished epoch recorded", "muted"))
        parts.append(H.key_values({"epochs": len(tr["epochs"]),
                                   "best val loss": _shown(tr["best_val_loss"]),
                                   "best checkpoint": tr["best_checkpoint"]}, t))
    return H.section("Training", *parts)


def _evaluation_section(evaluation: Mapping[str, Mapping[str, Any]]) -> H.Html:
    if not evaluation:
        return H.section("Evaluation", "no evaluation stage in this run")
    parts = [H.key_values({**{k: _shown(v) for k, v in ev["metrics"].items()},
                           "gates passed": ev["gates"]["passed"],
                           "gates failed": ev["gates"]["failed"],
                           "checkpoint": ev["checkpoint"],
                           "checkpoint digest": ev["checkpoint_digest"]}, f"{t}: headline")
             for t, ev in evaluation.items()]
    return H.section("Evaluation", *parts)


def render_summary_html(summary: Mapping[str, Any]) -> str:
    """The self-contained summary page from `summary_figures(...)`."""
    links = summary.get("links", {})
    link_list = H.Html("<ul>" + "".join(f"<li>{_link(href, text)}</li>"
                                        for text, href in links.items()) + "</ul>")
    parts = [H.section("Stages", _stage_table(summary.get("stages", []))),
             _data_section(summary.get("data", {})),
             _training_section(summary.get("training", {})),
             _evaluation_section(summary.get("evaluation", {})),
             H.section("Reports", link_list if links else "no detailed report yet")]
    return H.page(f"Run summary — {summary.get('run_id')}", *parts,
                  subtitle="stages, data, training curves, evaluation headline metrics")


# ---------------------------------------------------------------------------------------
# I/O edges


def _published(stage: Location) -> Manifest | None:
    try:
        return read_manifest(stage)
    except (MissingManifestError, ManifestMismatchError):
        return None


def collect_summary(run: RunPaths, inputs: Mapping[str, Manifest]) -> dict[str, Any]:
    """Read run.json, the trained tasks' result.json and the dedup report's manifest, then
    build `summary_figures`."""
    try:
        state = run.run_json.read_json()
    except FileNotFoundError:
        state = {}
    results = {name.split("/", 1)[1]: read_train_result(run.stage(name))
               for name in inputs if name.startswith("train/")}
    # Linked only when published (it is not an input: the summary does not depend on it).
    links = report_links(inputs, _published(run.stage(DEDUP_REPORT)))
    return summary_figures(run.run_id, state if isinstance(state, dict) else {}, inputs,
                           results, links)


def write_summary(summary: Mapping[str, Any], folder: Location) -> None:
    """Write `index.html` and `summary.json` into `folder` (each via a temporary name)."""
    # Strict JSON (no NaN, which many readers reject): fail, naming the problem, before
    # anything is written. summary_figures already turns non-finite floats into null.
    try:
        json.dumps(summary, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"summary is not strict JSON: {exc}") from exc
    (folder / INDEX_FILE).write_bytes(render_summary_html(summary).encode("utf-8"))
    (folder / SUMMARY_FILE).write_json(summary)


def _run_summary(ctx: StageContext) -> StageResult:
    summary = collect_summary(ctx.run, ctx.inputs)
    write_summary(summary, ctx.output)
    final = ctx.run.stage(STAGE_NAME) / INDEX_FILE
    counts = {"stages": len(summary["stages"]), "modalities": len(summary["data"]),
              "trained": len(summary["training"]), "evaluated": len(summary["evaluation"])}
    log.info("summary report: %d stages, %d modalities, %d trained, %d evaluated task(s): %s",
             counts["stages"], counts["modalities"], counts["trained"], counts["evaluated"],
             final)
    return StageResult(row_counts=counts,
                       extra={"report": final.url, "reports": [INDEX_FILE, SUMMARY_FILE]},
                       summary=f"report: {final}")


def summary_inputs() -> tuple[str, ...]:
    """From the modality registry: `dedup/<m>` of every registered modality, `train/<m>`
    of those with a training task, `evaluate/<m>` of those with an evaluation."""
    from pipeline import modalities

    specs = modalities.specs()
    return (*(f"dedup/{s.name}" for s in specs),
            *(f"train/{s.name}" for s in specs if s.training is not None),
            *(f"evaluate/{s.name}" for s in specs if s.evaluation is not None))


def summary_report_stage() -> Stage:
    """`reports/summary`: `index.html` + `summary.json` over the run's stages.

    Inputs are `summary_inputs()`; disabled ones are absent from `ctx.inputs` and left out
    of the page."""
    inputs = summary_inputs()
    return Stage(
        name=STAGE_NAME,
        run=_run_summary,
        config_of=lambda cfg: {"inputs": list(inputs)},
        inputs=inputs,
        description="render the run summary (index.html, summary.json)",
        kind="local",
        factory="pipeline.report:summary_report_stage",
    )
