"""A fake, fast stage graph shaped like the real one (synth -> ingest -> dedup -> train ->
evaluate, two tasks) for orchestrator tests: every stage writes real files (tiny Parquet,
a checkpoint folder with checkpoint.json) so plans, status and lineage see real manifests.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.ingest.stage import raw_file_records
from pipeline.orchestrator import Stage, StageContext, StageResult
from pipeline.storage import Location, read_manifest
from pipeline.train.stage import train_config_slice

TASKS = ("text", "images")


@dataclass
class FakeGraph:
    """Stages plus hooks: `calls` records runs; `failures[stage]` is raised, one per attempt."""

    calls: list[str] = field(default_factory=list)
    failures: dict[str, list[BaseException]] = field(default_factory=dict)

    def _maybe_fail(self, name: str) -> None:
        self.calls.append(name)
        pending = self.failures.get(name)
        if pending:
            raise pending.pop(0)

    def _stage(self, name: str, body: Callable[[StageContext, str, Any], StageResult],
               config_of: Callable[[PipelineConfig], Any], inputs: tuple[str, ...] = ()
               ) -> Stage:
        def run(ctx: StageContext) -> StageResult:
            self._maybe_fail(name)
            fs, path = ctx.output.filesystem()
            return body(ctx, path, fs)

        return Stage(name=name, run=run, config_of=config_of, inputs=inputs)

    def stages(self) -> list[Stage]:
        def synth(ctx: StageContext, path: str, fs: Any) -> StageResult:
            for task in TASKS:
                fs.pipe_file(f"{path}/{task}/raw-0.txt", f"{task} {ctx.cfg.synth.seed}".encode())
            return StageResult(row_counts={"records": 2}, summary="2 raw files")

        def ingest(task: str) -> Callable[[StageContext, str, Any], StageResult]:
            def body(ctx: StageContext, path: str, fs: Any) -> StageResult:
                table = pa.table({"id": list(range(10)), "task": [task] * 10})
                with fs.open(f"{path}/curated/part-00000.parquet", "wb") as fh:
                    pq.write_table(table, fh)
                paths = getattr(ctx.cfg.inputs, task).paths  # as the real ingest records them
                extra = raw_file_records([Location(p) for p in paths]) if paths else {}
                return StageResult(row_counts={"curated": 10}, extra=extra,
                                   summary="10 curated")
            return body

        def dedup(task: str) -> Callable[[StageContext, str, Any], StageResult]:
            def body(ctx: StageContext, path: str, fs: Any) -> StageResult:
                table = pa.table({"id": list(range(8)), "seed": [ctx.cfg.dedup.seed] * 8})
                with fs.open(f"{path}/data/part-00000.parquet", "wb") as fh:
                    pq.write_table(table, fh)
                return StageResult(row_counts={"kept": 8, "duplicates": 2}, summary="8 kept")
            return body

        def train(task: str) -> Callable[[StageContext, str, Any], StageResult]:
            def body(ctx: StageContext, path: str, fs: Any) -> StageResult:
                data = read_manifest(ctx.input(f"dedup/{task}")).content_digest
                ckpt = ctx.run.checkpoints.join(f"train_{task}", "checkpoint_000003")
                cfs, cpath = ckpt.filesystem()
                model = f"weights of {task}".encode()
                cfs.pipe_file(f"{cpath}/model.pt", model)
                meta = {"task": task, "step": 3, "data_digest": data,
                        "files": {"model.pt": {"size": len(model),
                                               "sha256": hashlib.sha256(model).hexdigest()}}}
                cfs.pipe_file(f"{cpath}/checkpoint.json", json.dumps(meta).encode())
                fs.pipe_file(f"{path}/result.json", b"{}")
                report = ctx.run.stage(f"train/{task}") / "result.json"
                return StageResult(row_counts={"epochs": 1},
                                   extra={"best_checkpoint": ckpt.url, "data_digest": data,
                                          "final_metrics": {"val_loss": 0.5},
                                          "best_val_loss": 0.5, "report": report.url},
                                   summary="1 epoch")
            return body

        def evaluate(task: str) -> Callable[[StageContext, str, Any], StageResult]:
            def body(ctx: StageContext, path: str, fs: Any) -> StageResult:
                extra = ctx.inputs[f"train/{task}"].extra
                ckpt = ctx.output.at(extra["best_checkpoint"])
                meta = (ckpt / "checkpoint.json").read_json()
                fs.pipe_file(f"{path}/report.html", b"<html></html>")
                fs.pipe_file(f"{path}/metrics.json", b"{}")
                report = ctx.run.stage(f"evaluate/{task}") / "report.html"
                return StageResult(row_counts={"examples": 4},
                                   extra={"metrics": {"accuracy": 0.75},
                                          "checkpoint": extra["best_checkpoint"],
                                          "checkpoint_digest": meta["files"]["model.pt"]["sha256"],
                                          "data_digest": extra["data_digest"],
                                          "report": report.url,
                                          "reports": ["report.html", "metrics.json"]},
                                   summary="accuracy 0.75")
            return body

        def summary(ctx: StageContext, path: str, fs: Any) -> StageResult:
            fs.pipe_file(f"{path}/summary.html", b"<html></html>")
            fs.pipe_file(f"{path}/summary.json", b"{}")
            report = ctx.run.stage("reports/summary") / "summary.html"
            return StageResult(extra={"report": report.url,
                                      "reports": ["summary.html", "summary.json"]},
                               summary=f"{len(ctx.inputs)} tasks")

        out = [self._stage("synth", synth, lambda cfg: cfg.synth.seed)]
        out += [self._stage(f"ingest/{t}", ingest(t), lambda cfg: "v1", ("synth",))
                for t in TASKS]
        out += [self._stage(f"dedup/{t}", dedup(t), lambda cfg: cfg.dedup.seed, (f"ingest/{t}",))
                for t in TASKS]
        out += [self._stage(f"train/{t}", train(t),
                            (lambda task: lambda cfg: train_config_slice(cfg, task))(t),
                            (f"dedup/{t}",)) for t in TASKS]
        out += [self._stage(f"evaluate/{t}", evaluate(t), lambda cfg: "eval", (f"train/{t}",))
                for t in TASKS]
        out.append(self._stage("reports/summary", summary, lambda cfg: "summary",
                               tuple(f"evaluate/{t}" for t in TASKS)))
        return out


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., PipelineConfig]:
    def make(*overrides: str) -> PipelineConfig:
        return config_from_dict({"storage": {"root": f"file://{tmp_path}"}, "run_id": "t",
                                 "orchestrator": {"backoff_initial_s": 0.5,
                                                  "backoff_max_s": 2.0}}, list(overrides))
    return make
