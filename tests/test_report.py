"""The run summary stage: figures from hand-made manifests, the page, publication, subsets."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline import modalities
from pipeline.config import config_from_dict
from pipeline.orchestrator import SelectionError, Stage, StageContext, run_pipeline
from pipeline.report import (
    STAGE_NAME,
    collect_summary,
    render_summary_html,
    report_links,
    summary_figures,
    summary_inputs,
    summary_report_stage,
)
from pipeline.storage import (
    FileEntry,
    Location,
    Manifest,
    RunPaths,
    StageWriter,
    is_published,
    read_manifest,
    verify_stage,
)
from pipeline.train.stage import train_stage

pytestmark = pytest.mark.unit

EVIL = "<script>alert(1)</script>"


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    parser = Tags()
    parser.feed(page)
    return parser


def _dedup(modality: str, raw: int, kept: int, dups: dict[str, int], quarantined_ingest: int,
           quarantined_dedup: int = 0) -> tuple[dict[str, int], dict[str, Any]]:
    n_dup = sum(dups.values())
    curated = kept + n_dup + quarantined_dedup
    counts = {"input": curated, "kept": kept, "duplicates": n_dup,
              "quarantined": quarantined_dedup, "split.train": kept - 2, "split.val": 1,
              "split.test": 1, **{f"duplicates.{r}": n for r, n in dups.items()}}
    quarantined = quarantined_ingest + quarantined_dedup
    quality = {"modality": modality,
               "rows": {"input": raw, "curated": kept, "duplicates": n_dup,
                        "quarantined": quarantined,
                        "reconciles": raw == kept + n_dup + quarantined},
               "quarantine_rate": {"total": quarantined / raw,
                                   "by_reason": {"EMPTY_TEXT": quarantined / raw}}}
    gates = [{"gate": "max_duplicate_rate", "passed": True},
             {"gate": "max_quarantine_rate", "passed": True}]
    return counts, {"quality": quality, "gates": gates}


def _history(losses: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"epoch": float(i + 1), "step": float(10 * (i + 1)), "train_loss": t,
             "val_loss": v, "lr": 0.001} for i, (t, v) in enumerate(losses)]


TEXT_HISTORY = _history([(4.0, 4.2), (3.1, 3.5), (2.6, 3.3)])
IMAGE_HISTORY = _history([(2.2, 2.0), (1.5, float("nan"))])  # a diverged val epoch


def _result(task: str, history: list[dict[str, float]]) -> dict[str, Any]:
    finite = [h["val_loss"] for h in history if math.isfinite(h["val_loss"])]
    return {"modality": task, "history": history, "best_val_loss": min(finite),
            "best_checkpoint": f"file:///ckpt/train_{task}/checkpoint_000002",
            "final_metrics": history[-1]}


def _publish(run: RunPaths, name: str, row_counts: dict[str, int], extra: dict[str, Any],
             files: dict[str, Any] | None = None) -> Manifest:
    writer = StageWriter(run.stage(name), name)
    for rel, body in (files or {}).items():
        if isinstance(body, str):
            (writer.staging / rel).write_bytes(body.encode())
        else:
            (writer.staging / rel).write_json(body)
    return writer.publish(row_counts=row_counts, extra=extra)


def _fake_run(root: Path, with_evaluate: bool = True) -> RunPaths:
    """A run with dedup/text+images, train/text+images, evaluate/text, a dedup report;
    each report is a file of its stage folder that its manifest names."""
    run = RunPaths(Location(f"file://{root}"), "r1")
    counts, extra = _dedup("text", raw=20, kept=12, dups={"exact": 2, "near_dup": 3},
                           quarantined_ingest=3)
    _publish(run, "dedup/text", counts, extra)
    counts, extra = _dedup("images", raw=9, kept=6, dups={"phash": 2}, quarantined_ingest=0,
                           quarantined_dedup=1)
    _publish(run, "dedup/images", counts, extra)
    for task, history in (("text", TEXT_HISTORY), ("images", IMAGE_HISTORY)):
        _publish(run, f"train/{task}", {"epochs": len(history)},
                 {"best_val_loss": 3.3,
                  "report": (run.stage(f"train/{task}") / "result.json").url},
                 {"result.json": _result(task, history)})
    if with_evaluate:
        _publish(run, "evaluate/text", {"rows": 7},
                 {"metrics": {"perplexity": 27.1, "token_accuracy": 0.31,
                              "diverged": float("inf")},
                  "checkpoint": "file:///ckpt/train_text/checkpoint_000002",
                  "checkpoint_digest": "ab" * 32,
                  "report": (run.stage("evaluate/text") / "report.html").url,
                  "reports": ["report.html", "metrics.json"],
                  "gates": [{"gate": "max_text_perplexity", "passed": False}]},
                 {"report.html": "<html></html>", "metrics.json": {}})
    _publish(run, "reports/dedup", {"text.kept": 12},
             {"report": (run.stage("reports/dedup") / "dedup.html").url},
             {"dedup.html": "<html></html>", "dedup.json": {}})
    stages = {
        "synth": {"state": "done", "seconds": 1.5, "started": 100.0, "summary": "20 records",
                  "rows": {"text.records": 20, "text.bad": 3}},
        "dedup/text": {"state": "done", "seconds": 12.25, "started": 110.0},
        "dedup/images": {"state": "done", "seconds": 8.0, "started": 120.0},
        "train/text": {"state": "done", "seconds": 40.0, "started": 130.0},
        "train/images": {"state": "failed", "error": f"RuntimeError: {EVIL}", "started": 140.0},
        STAGE_NAME: {"state": "running", "started": 200.0},
    }
    run.run_json.write_json({"run_id": "r1", "stages": stages})
    return run


def _inputs(run: RunPaths, names: tuple[str, ...]) -> dict[str, Manifest]:
    out = {}
    for name in names:
        try:
            out[name] = read_manifest(run.stage(name))
        except FileNotFoundError:
            continue  # absent, as a disabled stage is
    return out


def test_figures_from_manifests(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    inputs = _inputs(run, summary_inputs())
    assert "evaluate/images" not in inputs and "dedup/transactions" not in inputs
    summary = collect_summary(run, inputs)
    # Stage table: graph order, the summary itself left out, rows from the input manifests.
    names = [s["stage"] for s in summary["stages"]]
    assert names == ["synth", "dedup/images", "dedup/text", "train/images", "train/text",
                     "evaluate/text"]
    by_name = {s["stage"]: s for s in summary["stages"]}
    assert by_name["dedup/text"]["rows"] == {"input": 17, "kept": 12, "duplicates": 5,
                                             "quarantined": 0}
    assert by_name["dedup/text"]["seconds"] == 12.25
    assert by_name["synth"]["rows"] == {"text.bad": 3, "text.records": 20}
    assert by_name["synth"]["summary"] == "20 records"
    assert by_name["train/images"]["state"] == "failed"
    assert by_name["evaluate/text"]["state"] == "published"  # not in run.json
    assert by_name["evaluate/text"]["manifest"] == inputs["evaluate/text"].digest[:12]
    # Data figures count from the raw records, so they reconcile with the raw input.
    text = summary["data"]["text"]
    assert {k: text[k] for k in ("input", "kept", "duplicates", "quarantined")} == {
        "input": 20, "kept": 12, "duplicates": 5, "quarantined": 3}
    assert text["reconciles"] and text["duplicates_by_rule"] == {"exact": 2, "near_dup": 3}
    assert text["splits"] == {"test": 1, "train": 10, "val": 1}
    assert text["gates"] == {"passed": 2, "failed": 0}
    assert summary["data"]["images"]["quarantined"] == 1
    # Training curves, with the diverged epoch as a gap rather than NaN.
    assert summary["training"]["text"]["train_loss"] == [4.0, 3.1, 2.6]
    assert summary["training"]["images"]["val_loss"] == [2.0, None]
    assert summary["training"]["text"]["epochs"] == [1.0, 2.0, 3.0]
    # Evaluation headline, non-finite values as null.
    ev = summary["evaluation"]["text"]
    assert ev["metrics"] == {"diverged": None, "perplexity": 27.1, "token_accuracy": 0.31}
    assert ev["checkpoint_digest"] == "ab" * 32
    assert ev["gates"] == {"passed": 0, "failed": 1}
    # Each stage's main report, relative to reports/summary/index.html.
    assert summary["links"] == {"dedup report": "../dedup/dedup.html",
                                "training report images": "../../train/images/result.json",
                                "training report text": "../../train/text/result.json",
                                "evaluation report text": "../../evaluate/text/report.html"}
    for href in summary["links"].values():
        assert (root_of(run) / "reports/summary" / href).resolve().is_file(), href
    json.dumps(summary, allow_nan=False)  # strict JSON


def test_page_shows_every_part_inline_and_escaped(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    summary = collect_summary(run, _inputs(run, summary_inputs()))
    page = render_summary_html(summary)
    assert page == render_summary_html(summary)  # deterministic
    tags = parse(page)
    names = [t for t, _ in tags.tags]
    assert names.count("svg") == 4  # 2 data bar charts + 2 loss curves
    polylines = [a for t, a in tags.tags if t == "polyline"]
    assert len(polylines) == 4  # train + val loss per task
    # The images val curve skips its NaN epoch: one point, not a broken "nan" coordinate.
    assert all("nan" not in (a["points"] or "") for a in polylines)
    hrefs = [a["href"] for t, a in tags.tags if t == "a"]
    assert hrefs == ["../dedup/dedup.html", "../../train/images/result.json",
                     "../../train/text/result.json", "../../evaluate/text/report.html"]
    # Nothing the page could fetch: no scripts, no external sources, relative links only.
    assert "script" not in names and "link" not in names
    assert not [a for _, a in tags.tags for k in ("src", "href")
                if "://" in (a.get(k) or "")]
    text = "".join(tags.text)
    assert EVIL in text  # the error text shows as text...
    assert "<script>" not in page  # ...never as markup
    # n/a: the diverged metric and train/images' missing seconds (failed, never timed).
    for figure in ("27.1", "0.31", "12.25", "n/a", "text: loss per epoch", "images: records"):
        assert figure in text


def _absent(names: tuple[str, ...], run: RunPaths) -> list[Stage]:
    """Disabled stand-ins for the inputs that are not published (as the graph disables the
    stages of modalities or tasks a run does not select)."""
    return [Stage(name=n, run=lambda ctx: pytest.fail("disabled stage ran"),
                  config_of=lambda cfg: {}, enabled=lambda cfg: False)
            for n in names if not is_published(run.stage(n))]


def test_inputs_come_from_the_registry() -> None:
    stage = summary_report_stage()
    specs = modalities.specs()
    assert stage.inputs == summary_inputs() == (
        *(f"dedup/{s.name}" for s in specs),
        *(f"train/{s.name}" for s in specs if s.training is not None),
        *(f"evaluate/{s.name}" for s in specs if s.evaluation is not None))
    assert stage.kind == "local" and stage.factory == "pipeline.report:summary_report_stage"
    assert all(f"dedup/{m}" in stage.inputs for m in modalities.names())


def test_stage_publishes_and_is_cached(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    cfg = config_from_dict({"run_id": "r1", "storage": {"root": f"file://{tmp_path}"}})
    stage = summary_report_stage()
    # train/images failed in the hand-made run.json but has a published manifest: the
    # runner finds each input by its manifest; the unpublished ones are disabled here.
    absent = _absent(stage.inputs, run)
    assert "evaluate/images" in [s.name for s in absent]
    outcomes = run_pipeline(cfg, [*absent, stage])
    assert [o.state for o in outcomes] == ["skipped"] * len(absent) + ["ran"]
    manifest = verify_stage(run.stage(STAGE_NAME))
    assert sorted(f.path for f in manifest.files) == ["index.html", "summary.json"]
    assert manifest.row_counts == {"stages": 6, "modalities": 2, "trained": 2, "evaluated": 1}
    assert manifest.extra["report"].endswith("/runs/r1/reports/summary/index.html")
    assert manifest.extra["reports"] == ["index.html", "summary.json"]
    assert outcomes[-1].reports == (manifest.extra["report"],
                                    (run.stage(STAGE_NAME) / "summary.json").url)
    folder = root_of(run) / "reports/summary"
    written = json.loads((folder / "summary.json").read_text())
    assert written["evaluation"]["text"]["metrics"]["perplexity"] == 27.1
    parse((folder / "index.html").read_text())
    again = run_pipeline(cfg, [*absent, stage])
    assert again[-1].state == "cached"


def root_of(run: RunPaths) -> Path:
    return Path(run.run.url.removeprefix("file://"))


def test_any_subset_of_inputs(tmp_path: Path) -> None:
    """Only dedup/text published, training disabled, no evaluate stage in the run."""
    run = RunPaths(Location(f"file://{tmp_path}"), "r2")
    counts, extra = _dedup("text", raw=5, kept=4, dups={"exact": 1}, quarantined_ingest=0)
    _publish(run, "dedup/text", counts, extra)
    cfg = config_from_dict({"run_id": "r2", "storage": {"root": f"file://{tmp_path}"},
                            "modalities": ["text"], "train": {"text": {"enabled": False}}})
    stage = summary_report_stage()
    others = [s for s in _absent(stage.inputs, run) if s.name != "train/text"]
    outcomes = run_pipeline(cfg, [train_stage("text"), *others, stage])
    assert [o.state for o in outcomes] == ["skipped"] * (1 + len(others)) + ["ran"]
    folder = root_of(run) / "reports/summary"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["training"] == {} and summary["evaluation"] == {}
    assert summary["links"] == {}  # no dedup report, no train or evaluate report
    # The runner records only stages it ran: the disabled train/text is not in run.json.
    assert [s["stage"] for s in summary["stages"]] == ["dedup/text"]
    text = "".join(parse((folder / "index.html").read_text()).text)
    assert "no training stage in this run" in text
    assert "no evaluation stage in this run" in text
    # Inputs that neither ran, were published nor are disabled stop the run before it
    # starts (the runner's rule), naming them.
    with pytest.raises(SelectionError, match="input evaluate/text was never published"):
        run_pipeline(cfg, [train_stage("text"), stage])


def test_no_inputs_at_all_renders_a_page() -> None:
    summary = summary_figures("r0", {}, {}, {})
    page = render_summary_html(summary)
    text = "".join(parse(page).text)
    assert "no stage recorded yet" in text and "no dedup stage in this run" in text
    assert "<svg" not in page


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    run = RunPaths(Location(f"file://{tmp_path}"), "r3")
    _publish(run, "train/text", {"epochs": 1}, {})  # no result.json listed
    with pytest.raises(ValueError, match=r"train/text: the manifest lists no result.json"):
        collect_summary(run, _inputs(run, ("train/text",)))
    _publish(run, "train/text", {"epochs": 1}, {}, {"result.json": {"history": "oops"}})
    with pytest.raises(ValueError, match=r"train/text: result.json 'history' must be a list"):
        collect_summary(run, _inputs(run, ("train/text",)))
    bad_eval = Manifest(stage="evaluate/text", files=(FileEntry("m.json", 1, "0" * 64),),
                        extra={"metrics": [0.5]})
    with pytest.raises(ValueError, match=r"evaluate/text: extra\['metrics'\] must map"):
        summary_figures("r3", {}, {"evaluate/text": bad_eval}, {})
    with pytest.raises(ValueError, match=r"no result.json given for trained task\(s\)"):
        summary_figures("r3", {}, {"train/text": Manifest(stage="train/text", files=())}, {})


def test_stage_never_needs_spark(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, with_evaluate=False)
    cfg = config_from_dict({"run_id": "r1", "storage": {"root": f"file://{tmp_path}"}})
    stage = summary_report_stage()
    writer = StageWriter(run.stage(STAGE_NAME), STAGE_NAME)

    def no_spark() -> Any:
        raise AssertionError("the summary stage asked for Spark")

    ctx = StageContext(cfg, run, writer.staging, _inputs(run, stage.inputs), no_spark)
    result = stage.run(ctx)
    assert result.row_counts["evaluated"] == 0 and result.row_counts["trained"] == 2
    writer.publish(row_counts=result.row_counts, extra=result.extra)
    assert read_manifest(run.stage(STAGE_NAME)).file("index.html").size > 0


def test_report_links_follow_the_manifests() -> None:
    """One rule: a stage's reports are its manifest's .html/.json files named by
    extra['report'] (its main report, matched by the stage-relative tail, so a copied run
    still links) or extra['reports']; anything else is no report."""
    from pipeline.orchestrator.reports import report_files

    def manifest(stage: str, files: tuple[str, ...], **extra: Any) -> Manifest:
        return Manifest(stage=stage, files=tuple(FileEntry(f, 1, "0" * 64) for f in files),
                        extra=extra)

    moved = manifest("evaluate/text", ("metrics.json", "predictions/test.parquet",
                                       "report.html"),
                     report="file:///elsewhere/runs/old/evaluate/text/report.html",
                     reports=["report.html", "metrics.json"])
    assert report_files(moved) == ["report.html", "metrics.json"]
    unlisted = manifest("train/text", ("result.json",), report="file:///x/train_text.json")
    dedup = manifest("reports/dedup", ("dedup.html", "dedup.json"),
                     report="file:///r/runs/a/reports/dedup/dedup.html")
    assert report_files(unlisted) == [] and report_files(dedup) == ["dedup.html"]
    assert report_links({"evaluate/text": moved, "train/text": unlisted}, dedup) == {
        "dedup report": "../dedup/dedup.html",
        "evaluation report text": "../../evaluate/text/report.html"}
