"""A fourth modality registered from the test package only runs through plan, run,
status and lineage: the stages, reports and commands know no modality by name."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline import modalities
from pipeline.config import config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import plan, run_pipeline
from pipeline.orchestrator.lineage import lineage
from pipeline.orchestrator.status import run_status

sys.path.insert(0, str(Path(__file__).parent))
import toy  # a helper module beside this test

pytestmark = pytest.mark.integration


@pytest.fixture
def toy_spec(tmp_path: Path, ray_local: Any) -> Any:
    import ray.cloudpickle

    # Ray workers cannot import a test module: ship the toy's code by value.
    ray.cloudpickle.register_pickle_by_value(toy)
    spec = toy.make_spec(str(tmp_path / "raw"))
    with modalities.registered(spec):
        yield spec


def test_registry_lists_the_builtins_in_order() -> None:
    assert modalities.names()[:3] == ("text", "images", "transactions")
    with pytest.raises(ValueError, match="unknown modality 'nope'; registered: text"):
        modalities.get("nope")


def test_toy_modality_runs_through_plan_run_status_lineage(
        tmp_path: Path, spark: Any, toy_spec: Any) -> None:
    expected = toy.write_raw(tmp_path / "raw")
    cfg = config_from_dict({
        "run_id": "toy", "modalities": ["toy"],
        "storage": {"root": str(tmp_path / "store")},
        "spark": {"shuffle_partitions": 2}, "ray": {"num_cpus": 2},
        "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 100,
                  "log_every_steps": 100, "scaling": {"num_workers": 0}}})
    stages = default_stages()
    names = [s.name for s in stages]
    assert {"ingest/toy", "dedup/toy", "train/toy"} <= set(names)
    assert "evaluate/toy" not in names  # the toy has no evaluation spec

    before = {e.stage: e.decision for e in plan(cfg, stages)}
    assert before["ingest/toy"] == before["dedup/toy"] == before["train/toy"] == "run"
    assert before["synth"] == before["ingest/text"] == "disabled"

    outcomes = {o.name: o for o in run_pipeline(cfg, stages)}
    assert {n for n, o in outcomes.items() if o.state == "ran"} == {
        "ingest/toy", "dedup/toy", "reports/dedup", "train/toy", "reports/summary"}
    ingest, dedup = outcomes["ingest/toy"].rows, outcomes["dedup/toy"].rows
    assert ingest["input"] == expected["input"]
    assert ingest["curated"] == expected["curated"]
    assert ingest["quarantined.BAD_READING"] == expected["quarantined"]
    assert dedup["duplicates"] == expected["duplicates"]
    assert dedup["kept"] + dedup["duplicates"] + dedup["quarantined"] == dedup["input"]

    after = {e.stage: e.decision for e in plan(cfg, stages)}
    assert {after[n] for n in ("ingest/toy", "dedup/toy", "train/toy")} == {"cached"}

    status = run_status(cfg.storage.location, "toy")
    states = {s.name: s.state for s in status.stages}
    assert states["train/toy"] == states["dedup/toy"] == "done"
    train = next(s for s in status.stages if s.name == "train/toy")
    assert "best_val_loss" in train.metrics

    chains = lineage(cfg.storage.location, "toy")
    assert [c.task for c in chains] == ["toy"]
    chain = chains[0]
    assert chain.problems == (), chain.problems
    assert [link.kind for link in chain.links] == ["checkpoint", "data", "dedup", "ingest"]
    assert sorted(Path(f["url"]).name for f in chain.raw_files) == ["a.csv", "b.csv"]
