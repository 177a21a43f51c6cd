"""MLflow and Prometheus tracking of a pipeline run (issue 15, part 2), on the fake stage
graph: a local MLflow store and a real `mlflow server` on 127.0.0.1, the textfile
collector's file, a Pushgateway (a tiny HTTP server here, the real binary when installed);
a second run logs nothing twice, a dead server only warns."""

from __future__ import annotations

import dataclasses
import http.server
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pipeline.config import PipelineConfig
from pipeline.orchestrator import Stage, StageContext, StageResult, run_pipeline
from pipeline.tracking import prometheus
from pipeline.tracking.mlflow import flat_params, history_metrics, tracking_uri

from .conftest import FakeGraph

pytestmark = pytest.mark.unit

prom_parser = pytest.importorskip("prometheus_client.parser")
mlflow = pytest.importorskip("mlflow", reason="the `tracking` extra (mlflow-skinny) is needed")

HISTORY = [{"epoch": 1.0, "step": 2.0, "train_loss": 1.5, "val_loss": 1.25, "lr": 0.01,
            "samples_per_s": 100.0},
           {"epoch": 2.0, "step": 4.0, "train_loss": 0.75, "val_loss": 0.5, "lr": 0.005,
            "samples_per_s": 120.0}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stages(graph: FakeGraph) -> list[Stage]:
    """The fake graph, its train stages writing a two-epoch history into result.json as
    rank 0 does."""
    out = []
    for stage in graph.stages():
        if stage.name.startswith("train/"):
            def run(ctx: StageContext, _inner: Callable[[StageContext], StageResult]
                    = stage.run) -> StageResult:
                result = _inner(ctx)
                (ctx.output / "result.json").write_json({"history": HISTORY})
                extra = {**result.extra, "final_metrics": HISTORY[-1]}
                return dataclasses.replace(result, extra=extra)
            stage = dataclasses.replace(stage, run=run)
        out.append(stage)
    return out


class _Gateway(http.server.BaseHTTPRequestHandler):
    """Records PUTs as a Pushgateway receives them."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, self.headers.get("Authorization", ""), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    received: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_Gateway,), {"received": received})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 (SQLite store, artifacts proxied to tmp)."""
    exe = Path(sys.executable).with_name("mlflow")
    if not exe.exists():
        pytest.skip("the mlflow CLI is not installed (`tracking` extra)")
    tmp = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
         "--artifacts-destination", str(tmp / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: "
                                   f"{(tmp / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)  # the server and its uvicorn workers: its own session
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def _tracking_cfg(make_cfg: Callable[..., PipelineConfig], *sets: str) -> PipelineConfig:
    return make_cfg(*sets)


def _check_mlflow(uri: str) -> dict[str, Any]:
    """The MLflow runs the fake pipeline logged, checked; {modality: run}."""
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(uri)[0])
    exp = client.get_experiment_by_name("pipeline-test")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    by_modality = {r.data.tags["pipeline.modality"]: r for r in runs}
    assert sorted(by_modality) == ["images", "text"] and len(runs) == 2
    run = by_modality["text"]
    tags = run.data.tags
    assert tags["pipeline.run_id"] == "t"
    assert tags["pipeline.code_version"] and tags["pipeline.data_digest"]
    assert tags["pipeline.checkpoint_digest"] and tags["pipeline.checkpoint"].endswith(
        "checkpoint_000003")
    assert tags["pipeline.logged.train"] == tags["pipeline.train_manifest"]
    assert tags["pipeline.logged.evaluate"]
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["evaluate"] == "eval"  # the fake stage's config slice
    assert run.data.metrics["eval_accuracy"] == 0.75
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.5), (2, 0.75)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    files = {a.path for a in client.list_artifacts(run.info.run_id, "train/text")}
    assert files == {"train/text/result.json", "train/text/_MANIFEST.json"}
    files = {a.path for a in client.list_artifacts(run.info.run_id, "evaluate/text")}
    assert files == {"evaluate/text/report.html", "evaluate/text/metrics.json",
                     "evaluate/text/_MANIFEST.json"}
    return by_modality


def test_local_store_run_metrics_textfile_and_push_once_per_model(
        tmp_path: Path, graph: FakeGraph, make_cfg: Callable[..., PipelineConfig],
        gateway: tuple[str, list[tuple[str, str, bytes]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url, received = gateway
    monkeypatch.setenv("PIPELINE_PUSHGATEWAY_USERNAME", "pusher")
    monkeypatch.setenv("PIPELINE_PUSHGATEWAY_PASSWORD", "pushpw")
    store = tmp_path / "mlruns"
    cfg = _tracking_cfg(make_cfg, f"tracking.mlflow_uri={store}",
                        "tracking.mlflow_experiment=pipeline-test",
                        f"tracking.prometheus_textfile={tmp_path / 'textfile'}",
                        f"tracking.pushgateway_url={url}",
                        "storage.options={sas_token: sastok}")
    outcomes = run_pipeline(cfg, _stages(graph))
    assert {o.state for o in outcomes} == {"ran"}
    first = _check_mlflow(str(store))

    text = (tmp_path / "textfile" / "pipeline_t.prom").read_text()
    assert not list((tmp_path / "textfile").glob("*.tmp"))  # renamed into place
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in prom_parser.text_string_to_metric_families(text) for s in fam.samples}
    base = (("modality", "text"), ("run_id", "t"))
    assert samples[("pipeline_stage_rows_total", (("kind", "kept"), *base[:1],
                                                  base[1], ("stage", "dedup/text")))] == 8
    assert samples[("pipeline_train_loss", (*base, ("split", "val"),
                                            ("stage", "train/text")))] == 0.5
    assert samples[("pipeline_train_samples_per_second", (*base,
                                                          ("stage", "train/text")))] == 120
    assert samples[("pipeline_evaluate_metric", (("metric", "accuracy"), *base,
                                                 ("stage", "evaluate/text")))] == 0.75
    assert samples[("pipeline_stage_success", (("modality", ""), ("run_id", "t"),
                                               ("stage", "synth")))] == 1
    # one PUT per settled stage, to the run's group, with basic auth from the environment
    assert len(received) == len(outcomes)
    path, auth, body = received[-1]
    assert path == "/metrics/job/pipeline/run_id/t"
    assert auth.startswith("Basic ") and body.decode() == text
    assert "sastok" not in text and "pushpw" not in text

    # Second call: every stage cached, still one MLflow run per model, nothing doubled.
    outcomes = run_pipeline(cfg, _stages(graph))
    assert {o.state for o in outcomes} == {"cached"}
    second = _check_mlflow(str(store))
    assert {m: r.info.run_id for m, r in first.items()} == \
        {m: r.info.run_id for m, r in second.items()}
    text = (tmp_path / "textfile" / "pipeline_t.prom").read_text()
    assert 'pipeline_stage_cached{modality="text",run_id="t",stage="train/text"} 1.0' in text
    params = second["text"].data.params | second["text"].data.tags
    assert not any("sastok" in v for v in params.values())


@pytest.mark.integration  # the server takes tens of seconds to start on a busy machine
def test_real_mlflow_server(mlflow_server: str, graph: FakeGraph,
                            make_cfg: Callable[..., PipelineConfig]) -> None:
    cfg = _tracking_cfg(make_cfg, f"tracking.mlflow_uri={mlflow_server}",
                        "tracking.mlflow_experiment=pipeline-test")
    run_pipeline(cfg, _stages(graph))
    first = _check_mlflow(mlflow_server)
    run_pipeline(cfg, _stages(graph))
    assert {m: r.info.run_id for m, r in _check_mlflow(mlflow_server).items()} == \
        {m: r.info.run_id for m, r in first.items()}


def test_dead_server_warns_and_the_run_completes(
        tmp_path: Path, graph: FakeGraph, make_cfg: Callable[..., PipelineConfig],
        caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = _tracking_cfg(make_cfg, f"tracking.mlflow_uri=http://me:secretpw@{dead[7:]}",
                        f"tracking.pushgateway_url={dead}",
                        f"tracking.prometheus_textfile={tmp_path / 'm.prom'}")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        outcomes = run_pipeline(cfg, _stages(graph))
    assert time.monotonic() - started < 60
    assert {o.state for o in outcomes} == {"ran"}
    assert (tmp_path / "runs/t/reports/summary/_MANIFEST.json").exists()
    warned = [r.getMessage() for r in caplog.records]
    # once, then off; the URI's password masked
    assert sum(f"MLflow tracking at http://***@{dead[7:]} failed" in m for m in warned) == 1
    assert not any("secretpw" in m for m in warned)
    assert sum(f"Pushgateway {dead} did not take" in m for m in warned) == 1
    assert "pipeline_stage_success" in (tmp_path / "m.prom").read_text()  # textfile still on


def test_failed_stage_drops_its_success_gauge(
        tmp_path: Path, graph: FakeGraph, make_cfg: Callable[..., PipelineConfig]) -> None:
    from pipeline.orchestrator import StageFailed

    graph.failures["dedup/text"] = [ValueError("bad")]
    cfg = _tracking_cfg(make_cfg, f"tracking.prometheus_textfile={tmp_path / 'm.prom'}")
    with pytest.raises(StageFailed):
        run_pipeline(cfg, _stages(graph))
    text = (tmp_path / "m.prom").read_text()
    assert 'pipeline_stage_success{modality="text",run_id="t",stage="dedup/text"} 0.0' in text
    assert 'pipeline_stage_success{modality="text",run_id="t",stage="ingest/text"} 1.0' in text


def test_figures_to_metrics_names_labels_and_masking() -> None:
    figures = [
        prometheus.StageFigures("r1", "ingest/text", "text", "ran", 2.5,
                                {"input": 10, "curated": 7, "quarantined": 3,
                                 "quarantined.EMPTY_TEXT": 2, "quarantined.BAD_UTF8": 1},
                                finished=1700000000.0),
        prometheus.StageFigures("r1", "dedup/text", "text", "cached", 0.0,
                                {"kept": 5, "duplicates": 2, "duplicates.exact": 1,
                                 "duplicates.near": 1, "split.train": 4, "split.val": 1}),
        prometheus.StageFigures("r1", "train/text", "text", "ran", 9.0, {"epochs": 2},
                                {"final_metrics": {"train_loss": 0.7, "val_loss": 1e30,
                                                   "samples_per_s": 55.5},
                                 "best_val_loss": float("nan")}),
        prometheus.StageFigures("r1", "synth", "", "ran", 0.1,
                                {"text.records": 12, "files.read": 3}),
        prometheus.StageFigures("r1", "evaluate/text", "text", "ran", 1.0, {"examples": 4},
                                {"metrics": {"bits_per_byte": 2.5, "note": "x",
                                             "pr_auc": None}}),
    ]
    text = prometheus.exposition(prometheus.registry_of(
        prometheus.metric_families(figures, ("text", "images"))))
    fams = {f.name: f for f in prom_parser.text_string_to_metric_families(text)}
    # a per-modality count of a stage of no modality carries that modality
    assert 'pipeline_stage_rows_total{kind="records",modality="text",run_id="r1",' \
        'stage="synth"} 12.0' in text
    assert 'pipeline_stage_files_total{kind="read",modality="",run_id="r1",stage="synth"} 3.0' \
        in text
    assert fams["pipeline_stage_quarantined_rows"].type == "counter"
    got = {(s.name, s.labels.get("reason") or s.labels.get("rule") or s.labels.get("split")
            or s.labels.get("kind") or s.labels.get("metric") or "", s.labels["stage"]): s.value
           for f in fams.values() for s in f.samples}
    assert got[("pipeline_stage_quarantined_rows_total", "EMPTY_TEXT", "ingest/text")] == 2
    assert got[("pipeline_stage_duplicate_rows_total", "near", "dedup/text")] == 1
    assert got[("pipeline_stage_split_rows_total", "train", "dedup/text")] == 4
    assert got[("pipeline_stage_rows_total", "curated", "ingest/text")] == 7
    assert got[("pipeline_stage_duration_seconds", "", "ingest/text")] == 2.5
    assert ("pipeline_stage_duration_seconds", "", "dedup/text") not in got  # cached
    assert got[("pipeline_stage_last_success_timestamp_seconds", "", "ingest/text")] == 1.7e9
    assert got[("pipeline_train_epochs_total", "", "train/text")] == 2
    assert got[("pipeline_train_loss", "train", "train/text")] == 0.7
    assert ("pipeline_train_loss", "val", "train/text") not in got  # placeholder, no figure
    assert ("pipeline_train_best_val_loss", "", "train/text") not in got  # NaN
    assert got[("pipeline_evaluate_metric", "bits_per_byte", "evaluate/text")] == 2.5
    assert not any(k[1] in ("note", "pr_auc") for k in got)
    # a label value that carries a credential is masked
    secret = prometheus.StageFigures("r1", "ingest/text", "text", "ran", 1.0,
                                     {"quarantined.token=abc123": 1})
    text = prometheus.exposition(prometheus.registry_of(prometheus.metric_families([secret])))
    assert "abc123" not in text and 'reason="***"' in text


def test_textfile_path_and_atomic_write(tmp_path: Path) -> None:
    assert prometheus.textfile_path(str(tmp_path), "r1") == tmp_path / "pipeline_r1.prom"
    assert prometheus.textfile_path(f"file://{tmp_path}/x.prom", "r1") == tmp_path / "x.prom"
    target = tmp_path / "d" / "x.prom"
    prometheus.write_textfile(target, "a 1\n")
    prometheus.write_textfile(target, "a 2\n")
    assert target.read_text() == "a 2\n" and sorted(p.name for p in target.parent.iterdir()) \
        == ["x.prom"]


def test_params_history_and_uri_helpers(tmp_path: Path) -> None:
    params = flat_params({"train": {"epochs": 2, "text": {"lr": 0.01}, "sizes": [1, 2]},
                          "storage": {"sas_token": "tok", "endpoint": "https://h/x?sig=abc"},
                          "empty": {}})
    assert params == {"train.epochs": "2", "train.text.lr": "0.01", "train.sizes": "[1, 2]",
                      "storage.sas_token": "***", "storage.endpoint": "***", "empty": "{}"}
    assert history_metrics([*HISTORY, {"epoch": 3.0, "val_loss": 1e30, "x": float("inf")}]) \
        == [("lr", 0.01, 1), ("samples_per_s", 100.0, 1), ("train_loss", 1.5, 1),
            ("val_loss", 1.25, 1), ("lr", 0.005, 2), ("samples_per_s", 120.0, 2),
            ("train_loss", 0.75, 2), ("val_loss", 0.5, 2)]
    assert tracking_uri(str(tmp_path)) == (f"sqlite:///{tmp_path}/mlflow.db",
                                           (tmp_path / "artifacts").as_uri())
    assert tracking_uri("http://127.0.0.1:5000") == ("http://127.0.0.1:5000", None)


@pytest.mark.skipif(shutil.which("prometheus-pushgateway") is None,
                    reason="Debian's prometheus-pushgateway is not installed")
def test_real_pushgateway_serves_the_pushed_metrics(
        tmp_path: Path, graph: FakeGraph, make_cfg: Callable[..., PipelineConfig]) -> None:
    port = _free_port()
    proc = subprocess.Popen(["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        cfg = _tracking_cfg(make_cfg, f"tracking.pushgateway_url={url}")
        run_pipeline(cfg, _stages(graph))
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
            served = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    samples = [s for f in prom_parser.text_string_to_metric_families(served)
               for s in f.samples if s.name == "pipeline_stage_rows_total"]
    kept = [s for s in samples if s.labels.get("stage") == "dedup/images"
            and s.labels.get("kind") == "kept"]
    assert len(kept) == 1 and kept[0].value == 8
    assert kept[0].labels["job"] == "pipeline" and kept[0].labels["run_id"] == "t"


def test_tracking_config_problems_are_reported_together() -> None:
    from pipeline.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError) as err:
        config_from_dict({"tracking": {"pushgateway_url": "pushgateway:9091",
                                       "mlflow_timeout_s": 0, "mlflow_experiment": " "}})
    text = str(err.value)
    assert "tracking.pushgateway_url: must start with http://" in text
    assert "tracking.mlflow_timeout_s: must be > 0" in text
    assert "tracking.mlflow_experiment: must not be empty" in text
