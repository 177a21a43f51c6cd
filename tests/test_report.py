"""The run summary stage: figures from hand-made manifests, the page, publication, subsets."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import config_from_dict
from pipeline.orchestrator import Stage, StageContext, StageFailed, run_pipeline
from pipeline.report import (
    STAGE_NAME,
    collect_summary,
    render_summary_html,
    summary_figures,
    summary_inputs,
    summary_report_stage,
)
from pipeline.storage import (
    FileEntry,
    Manifest,
    RunPaths,
    StageWriter,
    join,
    read_manifest,
    verify_stage,
    write_json_atomic,
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
    return {"task": task, "history": history, "best_val_loss": min(finite),
            "best_checkpoint": f"file:///ckpt/train_{task}/checkpoint_000002",
            "final_metrics": history[-1]}


def _publish(run: RunPaths, name: str, row_counts: dict[str, int], extra: dict[str, Any],
             files: dict[str, Any] | None = None) -> Manifest:
    writer = StageWriter(run.stage(name), name)
    for rel, body in (files or {}).items():
        write_json_atomic(join(writer.staging_url, rel), body)
    return writer.publish(row_counts=row_counts, extra=extra)


def _fake_run(root: Path, with_evaluate: bool = True) -> RunPaths:
    """A run with dedup/text+images, train/text+images, evaluate/text, a dedup report."""
    run = RunPaths(f"file://{root}", "r1")
    counts, extra = _dedup("text", raw=20, kept=12, dups={"exact": 2, "near_dup": 3},
                           quarantined_ingest=3)
    _publish(run, "dedup/text", counts, extra)
    counts, extra = _dedup("images", raw=9, kept=6, dups={"phash": 2}, quarantined_ingest=0,
                           quarantined_dedup=1)
    _publish(run, "dedup/images", counts, extra)
    for task, history in (("text", TEXT_HISTORY), ("images", IMAGE_HISTORY)):
        _publish(run, f"train/{task}", {"epochs": len(history)},
                 {"best_val_loss": 3.3, "report": ""},
                 {"result.json": _result(task, history)})
    if with_evaluate:
        _publish(run, "evaluate/text", {"rows": 7},
                 {"metrics": {"perplexity": 27.1, "token_accuracy": 0.31,
                              "diverged": float("inf")},
                  "checkpoint": "file:///ckpt/train_text/checkpoint_000002",
                  "checkpoint_digest": "ab" * 32, "report": "file:///x/evaluate_text.html",
                  "gates": [{"gate": "max_text_perplexity", "passed": False}]})
    _publish(run, "reports/dedup", {"text.kept": 12}, {})
    stages = {
        "synth": {"state": "done", "seconds": 1.5, "started": 100.0, "summary": "20 records",
                  "rows": {"text.records": 20, "text.bad": 3}},
        "dedup/text": {"state": "done", "seconds": 12.25, "started": 110.0},
        "dedup/images": {"state": "done", "seconds": 8.0, "started": 120.0},
        "train/text": {"state": "done", "seconds": 40.0, "started": 130.0},
        "train/images": {"state": "failed", "error": f"RuntimeError: {EVIL}", "started": 140.0},
        STAGE_NAME: {"state": "running", "started": 200.0},
    }
    write_json_atomic(run.run_json, {"run_id": "r1", "stages": stages})
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
    inputs = _inputs(run, summary_inputs(["text", "images"]))
    assert "evaluate/images" not in inputs
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
    assert summary["links"] == {"dedup report": "../dedup/dedup.html",
                                "training report images": "../train_images.json",
                                "training report text": "../train_text.json",
                                "evaluation report text": "../evaluate_text.html"}
    json.dumps(summary, allow_nan=False)  # strict JSON


def test_page_shows_every_part_inline_and_escaped(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    summary = collect_summary(run, _inputs(run, summary_inputs(["text", "images"])))
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
    assert hrefs == ["../dedup/dedup.html", "../train_images.json", "../train_text.json",
                     "../evaluate_text.html"]
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


def test_stage_publishes_and_is_cached(tmp_path: Path) -> None:
    run = _fake_run(tmp_path)
    cfg = config_from_dict({"run_id": "r1", "storage": {"root": f"file://{tmp_path}"}})
    stage = summary_report_stage(["text", "images"])
    # train/images failed in the hand-made run.json but has a published manifest: the
    # runner finds each input by its manifest; evaluate/images is marked disabled here.
    evaluate_images = Stage(
        name="evaluate/images", run=lambda ctx: pytest.fail("disabled stage ran"),
        config_of=lambda cfg: {}, enabled=lambda cfg: False)
    outcomes = run_pipeline(cfg, [evaluate_images, stage])
    assert [o.state for o in outcomes] == ["skipped", "ran"]
    manifest = verify_stage(run.stage(STAGE_NAME))
    assert sorted(f.path for f in manifest.files) == ["index.html", "summary.json"]
    assert manifest.row_counts == {"stages": 6, "modalities": 2, "trained": 2, "evaluated": 1}
    assert manifest.extra["report"].endswith("/runs/r1/reports/summary/index.html")
    folder = Path(run.stage(STAGE_NAME).removeprefix("file://"))
    written = json.loads((folder / "summary.json").read_text())
    assert written["evaluation"]["text"]["metrics"]["perplexity"] == 27.1
    parse((folder / "index.html").read_text())
    again = run_pipeline(cfg, [evaluate_images, stage])
    assert again[-1].state == "cached"


def test_any_subset_of_inputs(tmp_path: Path) -> None:
    """Only dedup/text published, training disabled, no evaluate stage wired yet."""
    run = RunPaths(f"file://{tmp_path}", "r2")
    counts, extra = _dedup("text", raw=5, kept=4, dups={"exact": 1}, quarantined_ingest=0)
    _publish(run, "dedup/text", counts, extra)
    cfg = config_from_dict({"run_id": "r2", "storage": {"root": f"file://{tmp_path}"},
                            "modalities": ["text"], "train": {"text": {"enabled": False}}})
    stage = summary_report_stage(["text"], include_evaluate=False)
    assert stage.inputs == ("dedup/text", "train/text") and stage.kind == "local"
    outcomes = run_pipeline(cfg, [train_stage("text"), stage])
    assert [o.state for o in outcomes] == ["skipped", "ran"]
    folder = Path(run.stage(STAGE_NAME).removeprefix("file://"))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["training"] == {} and summary["evaluation"] == {}
    assert summary["links"] == {}  # no dedup report, no train or evaluate report
    # The runner records only stages it ran: the disabled train/text is not in run.json.
    assert [s["stage"] for s in summary["stages"]] == ["dedup/text"]
    text = "".join(parse((folder / "index.html").read_text()).text)
    assert "no training stage in this run" in text
    assert "no evaluation stage in this run" in text
    # Inputs that neither ran nor are disabled stop the run (the runner's rule), naming them;
    # hence include_evaluate=False while the graph has no evaluate stages.
    with pytest.raises((StageFailed, ValueError), match="evaluate/text"):
        run_pipeline(cfg, [train_stage("text"), summary_report_stage(["text"])])


def test_no_inputs_at_all_renders_a_page() -> None:
    summary = summary_figures("r0", {}, {}, {})
    page = render_summary_html(summary)
    text = "".join(parse(page).text)
    assert "no stage recorded yet" in text and "no dedup stage in this run" in text
    assert "<svg" not in page


def test_bad_inputs_name_the_problem(tmp_path: Path) -> None:
    run = RunPaths(f"file://{tmp_path}", "r3")
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
    with pytest.raises(ValueError, match="at least one task"):
        summary_report_stage([])


def test_stage_never_needs_spark(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, with_evaluate=False)
    cfg = config_from_dict({"run_id": "r1", "storage": {"root": f"file://{tmp_path}"}})
    stage = summary_report_stage(["text", "images"])
    writer = StageWriter(run.stage(STAGE_NAME), STAGE_NAME)

    def no_spark() -> Any:
        raise AssertionError("the summary stage asked for Spark")

    ctx = StageContext(cfg, run, writer.staging_url, _inputs(run, stage.inputs), no_spark)
    result = stage.run(ctx)
    assert result.row_counts["evaluated"] == 0 and result.row_counts["trained"] == 2
    writer.publish(row_counts=result.row_counts, extra=result.extra)
    assert read_manifest(run.stage(STAGE_NAME)).file("index.html").size > 0
