"""The train and evaluate stages end to end, on the session's sample run (tests/conftest.py):
tiny models of all three modalities trained (1 epoch) and evaluated, every output (reports
included) inside its stage and listed by its manifest, figures checked against independent
computations, reports, gates (a failed one leaves a marked report under reports/failed),
tampered checkpoints and results, and batch inference."""

from __future__ import annotations

import hashlib
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.evaluate.model import best_checkpoint, load_trained
from pipeline.evaluate.predict import predict_table
from pipeline.evaluate.stage import evaluate_stage, failed_report
from pipeline.orchestrator import StageFailed, run_pipeline
from pipeline.storage import Location, read_manifest
from pipeline.train.checkpoint import CheckpointMismatchError, CorruptCheckpointError
from pipeline.train.stage import read_train_result
from pipeline.train.tasks.text import BOS_ID, EOS_ID, PAD_ID
from pipeline.train.tasks.transactions import synthetic_transactions

pytestmark = pytest.mark.integration

TASKS = ("text", "images", "transactions")

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.conftest import SampleRun


def _txn_table() -> pa.Table:
    table = synthetic_transactions(700, seed=3, fraud_rate=0.2)
    rng = np.random.default_rng(3)
    split = rng.choice(["train"] * 3 + ["val", "test"], size=table.num_rows)
    return table.set_column(table.schema.get_field_index("split"), "split", pa.array(split))


@pytest.fixture(scope="module")
def run(sample_run: SampleRun) -> dict[str, Any]:
    """The session's sample run (tests/conftest.py): its train and evaluate stages, and
    the dedup tables they read."""
    paths = sample_run.paths
    return {"root": sample_run.root, "paths": paths, "sample": sample_run,
            "run_id": sample_run.run_id, "outcomes": sample_run.outcomes,
            "tables": {t: sample_run.table(f"dedup/{t}") for t in TASKS}}


def _metrics(run: dict[str, Any], task: str) -> dict[str, Any]:
    body: dict[str, Any] = (run["paths"].stage(f"evaluate/{task}") / "metrics.json").read_json()
    return body


def _predictions(run: dict[str, Any], task: str, split: str = "test") -> pa.Table:
    stage = run["paths"].stage(f"evaluate/{task}")
    return pq.read_table(str(Path(stage.path) / "predictions" / f"{split}.parquet"))


def _model(run: dict[str, Any], task: str) -> Any:
    cfg = run["sample"].cfg()
    ref = best_checkpoint(run["paths"].stage(f"train/{task}"))
    return load_trained(cfg, task, ref.checkpoint, ref.task_state)


def _test_rows(run: dict[str, Any], task: str) -> pa.Table:
    table = run["tables"][task]
    return table.filter(pa.compute.equal(table.column("split"), "test"))


def test_stages_ran_and_manifests_carry_lineage(run: dict[str, Any]) -> None:
    states = {o.name: o.state for o in run["outcomes"]}
    assert {states[f"{kind}/{t}"] for kind in ("train", "evaluate") for t in TASKS} == {"ran"}
    for task in TASKS:
        manifest = read_manifest(run["paths"].stage(f"evaluate/{task}"))
        extra = manifest.extra
        assert extra["data_digest"] == read_manifest(
            run["paths"].stage(f"dedup/{task}")).content_digest
        ckpt_dir = Path(extra["checkpoint"].removeprefix("file://"))
        sha = hashlib.sha256((ckpt_dir / "model.pt").read_bytes()).hexdigest()
        assert extra["checkpoint_digest"] == sha
        assert extra["report"] == (run["paths"].stage(f"evaluate/{task}") / "report.html").url
        preds = _predictions(run, task)
        assert manifest.row_counts["test"] == preds.num_rows == _test_rows(run, task).num_rows
        assert set(preds.column("model_digest").to_pylist()) == {sha}
        ids = preds.column(preds.column_names[0]).to_pylist()
        assert ids == sorted(ids)
        assert _metrics(run, task)["metrics"] == extra["metrics"]


def test_every_output_is_inside_its_stage_and_listed_by_its_manifest(
        run: dict[str, Any], tmp_path: Path) -> None:
    paths = run["paths"]
    for task in TASKS:
        train = paths.stage(f"train/{task}")
        manifest = read_manifest(train)
        assert [f.path for f in manifest.files] == ["result.json"]
        assert manifest.extra["report"] == (train / "result.json").url
        assert manifest.extra["reports"] == ["result.json"]
        result = read_train_result(train)
        assert result["modality"] == task and result["history"]
        assert result["best_checkpoint"] == manifest.extra["best_checkpoint"]
        evaluate = read_manifest(paths.stage(f"evaluate/{task}"))
        splits = ("val", "test") if task == "transactions" else ("test",)
        assert sorted(f.path for f in evaluate.files) == sorted(
            ["metrics.json", "report.html", *(f"predictions/{s}.parquet" for s in splits)])
        assert evaluate.extra["reports"] == ["report.html", "metrics.json"]
    # Nothing was written beside the stages (the reports folder holds no stage output).
    reports = run["root"] / "runs" / run["run_id"] / "reports"
    assert not [p for p in reports.rglob("*") if p.name.startswith(("train_", "evaluate_"))]
    # A result.json changed after publication is refused, naming the file.
    copy = tmp_path / "train"
    shutil.copytree(paths.stage("train/text").path, copy)
    with (copy / "result.json").open("a") as fh:
        fh.write(" ")
    with pytest.raises(ValueError, match=r"result\.json does not match its manifest"):
        read_train_result(Location(f"file://{copy}"))


def _stream_nll_nats(model: Any, text: str, seq_len: int) -> tuple[float, float]:
    """(NLL of the bytes, NLL of EOS) in nats of one document scored window by window:
    the stream BOS + bytes + EOS in consecutive windows of seq_len targets (a plain
    loop, apart from the vectorized scorer under test)."""
    stream = [BOS_ID, *text.encode(), EOS_ID]
    byte_nats = eos_nats = 0.0
    for start in range(0, len(stream) - 1, seq_len):
        inputs = stream[start:start + seq_len]
        targets = stream[start + 1:start + seq_len + 1]
        logits = model(torch.tensor([inputs + [PAD_ID] * (seq_len - len(inputs))]))[0]
        nll = torch.log_softmax(logits.double(), -1)[torch.arange(len(targets)),
                                                     torch.tensor(targets)]
        for target, value in zip(targets, (-nll).tolist(), strict=True):
            if target == EOS_ID:
                eos_nats += value
            else:
                byte_nats += value
    return byte_nats, eos_nats


def test_text_figures_match_an_independent_pass(run: dict[str, Any]) -> None:
    m = _metrics(run, "text")["metrics"]
    trained = _model(run, "text")
    texts = _test_rows(run, "text").column("text").to_pylist()
    with torch.no_grad():
        nats = [_stream_nll_nats(trained.model, t, trained.task.seq_len) for t in texts]
    n_bytes = sum(len(t.encode()) for t in texts)
    byte_nats, eos_nats = sum(b for b, _ in nats), sum(e for _, e in nats)
    loss = (byte_nats + eos_nats) / (n_bytes + len(texts))
    assert m["bytes"] == n_bytes and m["documents"] == len(texts)
    assert m["loss"] == pytest.approx(loss, rel=1e-5)
    assert m["bits_per_byte"] == pytest.approx(byte_nats / math.log(2) / n_bytes, rel=1e-5)
    assert m["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    samples = _metrics(run, "text")["samples"]
    assert len(samples) == 2 and all(s["prompt"] for s in samples)


def test_image_figures_match_an_independent_pass(run: dict[str, Any]) -> None:
    body = _metrics(run, "images")
    trained = _model(run, "images")
    rows = _test_rows(run, "images")
    batch = {c: rows.column(c).to_numpy(zero_copy_only=False) for c in ("bytes", "label")}
    with torch.no_grad():
        t = trained.task.to_tensors(batch, train=False)
        pred = trained.model(t["images"]).argmax(1).numpy()
    truth = t["labels"].numpy()
    assert body["metrics"]["accuracy"] == pytest.approx(float(np.mean(pred == truth)))
    classes = len(body["details"]["confusion"])
    assert classes >= 2
    confusion = np.zeros((classes, classes), int)
    for a, b in zip(truth, pred, strict=True):
        confusion[a, b] += 1
    assert body["details"]["confusion"] == confusion.tolist()
    preds = _predictions(run, "images")
    names = [c for c in preds.column_names if c.startswith("prob_")]
    assert len(names) == classes
    probs = np.stack([preds.column(c).to_numpy() for c in names], 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_fraud_figures_match_brute_force(run: dict[str, Any]) -> None:
    m = _metrics(run, "transactions")["metrics"]
    test = _predictions(run, "transactions")
    s = test.column("fraud_score").to_numpy()
    y = test.column("is_fraud").to_numpy(zero_copy_only=False).astype(bool)
    pos, neg = s[y], s[~y]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
           ) / (len(pos) * len(neg))
    assert m["roc_auc"] == pytest.approx(auc, abs=1e-12)
    val = _predictions(run, "transactions", "val")
    assert val.num_rows == (run["tables"]["transactions"].column("split").to_numpy(
        zero_copy_only=False) == "val").sum()
    pred = s >= m["threshold"]
    assert m["recall"] == pytest.approx(np.sum(pred & y) / y.sum())
    assert m["threshold"] in set(val.column("fraud_score").to_pylist())


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


@pytest.mark.parametrize("task,plots", [("text", 1), ("images", 3), ("transactions", 3)])
def test_reports_are_self_contained_with_plots(run: dict[str, Any], task: str,
                                               plots: int) -> None:
    page = (Path(run["paths"].stage(f"evaluate/{task}").path) / "report.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert parser.tags.count("svg") >= plots
    assert "<script" not in page
    # The only URL allowed is the SVG namespace name, which is never fetched.
    assert not re.search(r"https?://", page.replace('xmlns="http://www.w3.org/2000/svg"', ""))
    assert "training curves" in page and "did not publish" not in page
    assert _metrics(run, task)["history"]


def test_failing_gate_publishes_nothing_and_leaves_a_marked_report(
        run: dict[str, Any]) -> None:
    paths = run["paths"]
    published = read_manifest(paths.stage("evaluate/text")).digest
    html, data = failed_report(paths, "text")
    run_id = run["run_id"]
    assert html.url.endswith(f"runs/{run_id}/reports/failed/evaluate_text.html")
    cfg = run["sample"].cfg("gates.max_text_bits_per_byte=0.001")
    with pytest.raises(StageFailed, match=r"gate max_text_bits_per_byte failed for text: "
                                          r"bits per byte [0-9.]+ > 0\.001.*did not publish.*"
                                          + re.escape(html.url)):
        run_pipeline(cfg, [evaluate_stage("text")])
    state = paths.run_json.read_json()["stages"]["evaluate/text"]
    assert state["state"] == "failed"
    assert read_manifest(paths.stage("evaluate/text")).digest == published  # untouched
    report = data.read_json()
    assert report["gates"][0]["passed"] is False
    page = html.read_bytes().decode()
    assert "did not publish" in page and "max_text_bits_per_byte" in page and "FAIL" in page
    # Back to the published settings: the stage is cached, done again, and the report of
    # the failed attempt goes (a stale failure never outlives the stage's next success).
    outcomes = run_pipeline(run["sample"].cfg(), [evaluate_stage("text")])
    assert [o.state for o in outcomes] == ["cached"]
    assert paths.run_json.read_json()["stages"]["evaluate/text"]["state"] == "done"
    assert not html.exists() and not data.exists()


def test_tampered_or_foreign_checkpoint_is_refused(run: dict[str, Any], tmp_path: Path
                                                   ) -> None:
    cfg = run["sample"].cfg()
    ref = best_checkpoint(run["paths"].stage("train/transactions"))
    copy = tmp_path / "ckpt"
    shutil.copytree(ref.checkpoint.path, copy)
    with pytest.raises(CheckpointMismatchError, match=r"manifest digest [0-9a-f]{64}.*"
                                                      r"manifest digest 0{64}"):
        load_trained(cfg, "transactions", f"file://{copy}", expected_data_digest="0" * 64)
    with pytest.raises(CheckpointMismatchError, match="is a 'transactions' model"):
        load_trained(cfg, "text", f"file://{copy}")
    data = bytearray((copy / "model.pt").read_bytes())
    data[-100] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError, match="refusing to load"):
        load_trained(cfg, "transactions", f"file://{copy}")


def test_predict_table_publishes_sorted_predictions_with_lineage(run: dict[str, Any],
                                                                 tmp_path: Path) -> None:
    cfg = run["sample"].cfg()
    source = run["paths"].stage("dedup/transactions")
    first = predict_table(cfg, "transactions", source, f"file://{tmp_path}/p1")
    table = pq.read_table(str(tmp_path / "p1" / "predictions" / "part-00000.parquet"))
    assert first.rows == table.num_rows == run["tables"]["transactions"].num_rows
    ids = table.column("txn_id").to_pylist()
    assert ids == sorted(ids)
    extra = read_manifest(Location(f"file://{tmp_path}/p1")).extra
    assert extra["model_digest"] == first.checkpoint_digest == read_manifest(
        run["paths"].stage("evaluate/transactions")).extra["checkpoint_digest"]
    assert extra["input_url"] == source.url and len(extra["input_digest"]) == 64
    # Same model, same rows: the test-split scores equal the evaluate stage's.
    test = _predictions(run, "transactions")
    mine = dict(zip(ids, table.column("fraud_score").to_pylist(), strict=True))
    np.testing.assert_allclose([mine[i] for i in test.column("txn_id").to_pylist()],
                               test.column("fraud_score").to_numpy(), rtol=1e-6)
    # Deterministic: a second run on the same multi-block table writes identical bytes
    # (the batches follow input order, not block arrival: inference.score).
    predict_table(cfg, "transactions", source, f"file://{tmp_path}/p2",
                  checkpoint=first.checkpoint_url)
    assert ((tmp_path / "p1/predictions/part-00000.parquet").read_bytes()
            == (tmp_path / "p2/predictions/part-00000.parquet").read_bytes())


def test_predict_table_names_missing_columns(run: dict[str, Any], tmp_path: Path) -> None:
    table = _txn_table().drop_columns(["amount", "velocity_1h"])
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"missing column\(s\) amount, velocity_1h for the "
                                         r"transactions model; expected columns: txn_id"):
        predict_table(run["sample"].cfg(), "transactions", str(tmp_path / "bad.parquet"),
                      f"file://{tmp_path}/out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("task", TASKS)
def test_scoring_in_process_equals_the_actor_pool(run: dict[str, Any], task: str) -> None:
    """The sample run scored its splits in its own process (they are small); the actor
    pool gives the same rows, in the same order, with the same values."""
    from pipeline.evaluate import inference
    from pipeline.evaluate.stage import score_splits, split_rows

    cfg = run["sample"].cfg()
    data = run["paths"].stage(f"dedup/{task}")
    splits = ("val", "test") if task == "transactions" else ("test",)
    rows = split_rows(read_manifest(data), splits)
    assert rows is not None and inference.scores_in_process(rows, cfg.evaluate)
    assert not inference.scores_in_process(None, cfg.evaluate)  # size unknown: the pool
    assert not inference.scores_in_process(rows, cfg.evaluate.__class__(
        in_process_max_rows=rows - 1))
    trained = _model(run, task)
    spec = inference.ModelSpec(cfg, task, trained.checkpoint, trained.checkpoint_digest,
                               trained.task_state)
    here = score_splits(task, data, splits, spec, trained, rows)
    pool = score_splits(task, data, splits, spec)  # no model here: the pool
    for split in splits:
        assert here[split].num_rows == pool[split].num_rows > 0
        assert here[split].schema == pool[split].schema
        published = _predictions(run, task, split)
        assert published.equals(here[split])  # the stage's output: scored in process
        for name in here[split].column_names:
            a, b = here[split].column(name), pool[split].column(name)
            if pa.types.is_floating(a.type):
                np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), rtol=1e-6, atol=1e-9,
                                           err_msg=name)
            else:
                assert a.equals(b), name
