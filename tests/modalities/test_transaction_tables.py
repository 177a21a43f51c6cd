"""Four transaction tables users actually have (card fraud, credit default, a `;` bank
statement, a headerless whitespace purchase log), each generated small in the test, run
through ingest -> dedup -> train -> evaluate (where it has a label) with configuration
only: the configuration is what `pipeline inspect` prints for the file, used as it is."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import plan, run_pipeline

sys.path.insert(0, str(Path(__file__).parent))
import tables  # a helper module beside this test

pytestmark = pytest.mark.integration

TINY: dict[str, Any] = {
    "modalities": ["transactions"],
    "spark": {"shuffle_partitions": 2}, "ray": {"num_cpus": 2},
    "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 1000,
              "log_every_steps": 100, "scaling": {"num_workers": 0},  # Ray Train local mode
              "transactions": {"hidden": 16, "batch_size": 32}},
    "evaluate": {"batch_size": 64},
}
MODEL_STAGES = ("ingest/transactions", "dedup/transactions", "train/transactions",
                "evaluate/transactions")


def _inspected(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# unsure:" in out or "# " in out
    parsed = yaml.safe_load(out)
    assert set(parsed) == {"inputs"}
    return parsed  # type: ignore[no-any-return]


def _run(name: str, written: tables.Written, tmp_path: Path,
         capsys: pytest.CaptureFixture[str]) -> tuple[Any, dict[str, Any]]:
    cfg = config_from_dict({**TINY, **_inspected(written.path, capsys), "run_id": name,
                            "storage": {"root": f"file://{tmp_path / 'store'}"}})
    # The data and model stages; the HTML reports are the sample run's to test.
    outcomes = {o.name: o for o in run_pipeline(cfg, default_stages(), selected=MODEL_STAGES)}
    ingest, dedup = outcomes["ingest/transactions"].rows, outcomes["dedup/transactions"].rows
    assert ingest["input"] == written.rows
    assert ingest["curated"] == written.rows, ingest  # clean tables: nothing quarantined
    assert dedup["duplicates"] == written.duplicates
    assert dedup["kept"] + dedup["duplicates"] + dedup["quarantined"] == dedup["input"]
    return cfg, outcomes


@pytest.fixture
def hmac_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_HMAC_KEY", "test-tables-hmac-key-0123456789abcdef")


@pytest.mark.parametrize("shape", ["card_fraud", "credit_default"])
def test_labeled_tables_train_and_evaluate(shape: str, tmp_path: Path, spark: Any,
                                           ray_local: Any, hmac_key: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    written = getattr(tables, f"write_{shape}")(tmp_path / "raw")
    _, outcomes = _run(shape, written, tmp_path, capsys)
    assert outcomes["train/transactions"].state == "ran"
    metrics = outcomes["evaluate/transactions"].extra["metrics"]
    assert metrics["rows"] > 0 and metrics["positives"] > 0
    assert metrics["pr_auc"] is not None and metrics["roc_auc"] is not None


@pytest.mark.parametrize("shape", ["bank_statement", "purchase_log"])
def test_unlabeled_tables_are_deduplicated_and_training_says_why_not(
        shape: str, tmp_path: Path, spark: Any, hmac_key: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    written = getattr(tables, f"write_{shape}")(tmp_path / "raw")
    cfg, outcomes = _run(shape, written, tmp_path, capsys)
    assert "train/transactions" not in outcomes or \
        outcomes["train/transactions"].state != "ran"
    entries = {e.stage: e for e in plan(cfg, default_stages())}
    for stage in ("train/transactions", "evaluate/transactions"):
        assert entries[stage].decision == "disabled"
        assert "no label column" in entries[stage].reason
