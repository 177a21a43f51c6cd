from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipeline.orchestrator import run_pipeline
from pipeline.orchestrator.lineage import CHECKPOINT_META, CHECKPOINT_MODEL, lineage
from pipeline.orchestrator.plan import run_paths
from pipeline.orchestrator.status import RunNotFoundError, run_status
from pipeline.storage import Location, read_manifest

pytestmark = pytest.mark.unit


def test_status_reads_states_figures_reports(tmp_path: Path, graph: Any,
                                             make_cfg: Callable[..., Any]) -> None:
    cfg = make_cfg()
    run_pipeline(cfg, graph.stages())
    st = run_status(cfg.storage.location, "t")
    names = [s.name for s in st.stages]
    assert names == [s.name for s in graph.stages()]  # graph order, from run.json
    by_name = {s.name: s for s in st.stages}
    assert {s.state for s in st.stages} == {"done"} and all(s.published for s in st.stages)
    assert by_name["evaluate/text"].metrics == {"accuracy": 0.75}
    assert by_name["train/images"].metrics == {"val_loss": 0.5, "best_val_loss": 0.5}
    assert by_name["dedup/text"].rows == {"kept": 8, "duplicates": 2}
    assert by_name["dedup/text"].seconds is not None and by_name["dedup/text"].attempts == 1
    # Every stage's reports are files of its own folder its manifest lists, main one first.
    run = f"file://{tmp_path}/runs/t"
    assert st.reports == (
        *(f"{run}/train/{t}/result.json" for t in ("text", "images")),
        *(f"{run}/evaluate/{t}/{f}" for t in ("text", "images")
          for f in ("report.html", "metrics.json")),
        f"{run}/reports/summary/summary.html", f"{run}/reports/summary/summary.json")
    assert st.lock is None
    body = st.to_dict()
    assert json.loads(json.dumps(body))["stages"][0]["name"] == "synth"


def test_status_of_a_crashed_run_says_interrupted(graph: Any,
                                                  make_cfg: Callable[..., Any]) -> None:
    cfg = make_cfg()
    run_pipeline(cfg, graph.stages())
    run = run_paths(cfg)
    state = run.run_json.read_json()
    state["stages"]["train/text"]["state"] = "running"  # as a kill -9 mid-stage leaves it
    run.run_json.write_json(state)
    st = run_status(cfg.storage.location, "t")
    assert {s.name: s.state for s in st.stages}["train/text"] == "interrupted"
    with pytest.raises(RunNotFoundError, match="no run 'nope' under"):
        run_status(cfg.storage.location, "nope")


def test_lineage_chains_every_digest(tmp_path: Path, graph: Any,
                                     make_cfg: Callable[..., Any]) -> None:
    cfg = make_cfg()
    run_pipeline(cfg, graph.stages())
    run = run_paths(cfg)
    chains = {c.task: c for c in lineage(cfg.storage.location, "t")}
    assert set(chains) == {"text", "images"}
    text = chains["text"]
    assert text.source == "evaluate/text" and text.metrics == {"accuracy": 0.75}
    assert text.problems == ()
    kinds = {link.kind: link for link in text.links}
    assert kinds["checkpoint"].digest == hashlib.sha256(b"weights of text").hexdigest()
    dedup = read_manifest(run.stage("dedup/text"))
    assert kinds["data"].digest == dedup.content_digest
    assert kinds["dedup"].digest == dedup.digest
    assert kinds["ingest"].digest == read_manifest(run.stage("ingest/text")).digest
    raw = tmp_path / "runs/t/synth/text/raw-0.txt"
    assert [dict(f) for f in text.raw_files] == [
        {"url": f"file://{raw}", "size": raw.stat().st_size,
         "sha256": hashlib.sha256(raw.read_bytes()).hexdigest()}]


def test_lineage_flags_a_model_trained_on_other_data(graph: Any,
                                                     make_cfg: Callable[..., Any]) -> None:
    run_pipeline(make_cfg(), graph.stages())
    # dedup/text re-published with other content; train/evaluate not re-run.
    run_pipeline(make_cfg("dedup.seed=9"), graph.stages(), selected=["dedup/text"])
    chains = {c.task: c for c in lineage(make_cfg().storage.location, "t")}
    assert chains["images"].problems == ()
    problems = chains["text"].problems
    assert len(problems) == 1
    assert problems[0].startswith("MISMATCH: the checkpoint was trained on data ")
    assert "but the published dedup/text holds" in problems[0]
    assert chains["text"].to_dict()["ok"] is False


def test_lineage_falls_back_to_training(graph: Any, make_cfg: Callable[..., Any]) -> None:
    stages = [s for s in graph.stages() if not s.name.startswith(("evaluate/", "reports/"))]
    run_pipeline(make_cfg(), stages)
    chains = lineage(make_cfg().storage.location, "t")
    assert [(c.task, c.source, dict(c.metrics)) for c in chains] == [
        ("text", "train/text", {"val_loss": 0.5}), ("images", "train/images", {"val_loss": 0.5})]
    assert all(not c.problems for c in chains)


def test_checkpoint_file_names_match_the_trainer() -> None:
    from pipeline.train import checkpoint

    assert (CHECKPOINT_META, CHECKPOINT_MODEL) == (checkpoint.META_FILE, checkpoint.MODEL_FILE)


def test_lineage_lists_configured_raw_files(tmp_path: Path, graph: Any,
                                            make_cfg: Callable[..., Any],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_bytes(b'{"text": "a"}\n')
    (raw / "b.jsonl").write_bytes(b'{"text": "b"}\n')
    cfg = make_cfg(f"inputs.text.paths=[{raw}]")
    run_pipeline(cfg, graph.stages())
    text = {c.task: c for c in lineage(cfg.storage.location, "t")}["text"]
    assert text.raw_note == "recorded by ingest" and text.problems == ()
    assert [(f["url"], f["sha256"]) for f in text.raw_files] == [
        (f"file://{raw}/{n}", hashlib.sha256((raw / n).read_bytes()).hexdigest())
        for n in ("a.jsonl", "b.jsonl")]
    # Past the file limit only the listing digest stands for the files.
    import pipeline.ingest.stage as ingest_stage

    monkeypatch.setattr(ingest_stage, "RAW_FILES_MAX", 1)
    records = ingest_stage.raw_file_records([Location(f"file://{raw}")])
    assert records["raw_file_count"] == 2 and "raw_files" not in records
    assert records["raw_digest"] == ingest_stage.raw_listing_digest([Location(f"file://{raw}")])
