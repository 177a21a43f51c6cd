"""The ingest stages end to end: synth -> ingest/<modality> through the runner (the
session's sample run, tests/conftest.py, and small runs of their own)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline import modalities
from pipeline.config import PipelineConfig, config_from_dict
from pipeline.ingest.stage import ReconciliationError, ingest_stage
from pipeline.ingest.tokens import DEV_HMAC_KEY
from pipeline.orchestrator import StageFailed, run_pipeline
from pipeline.orchestrator.stages import stage_from_factory, synth_stage
from pipeline.storage import (
    Location,
    RunPaths,
    is_published,
    published_files,
    read_manifest,
    verify_stage,
)
from pipeline.synth import GroundTruth

pytestmark = pytest.mark.integration

if TYPE_CHECKING:  # conftest is not importable at run time (no packages under tests/)
    from tests.conftest import SampleRun

ROOT = Path(__file__).resolve().parents[2]
MODALITIES = modalities.names()


def _cfg(root: Path, run_id: str = "t", **extra: Any) -> PipelineConfig:
    return config_from_dict({"run_id": run_id, "storage": {"root": f"file://{root}"},
                             "synth": {"scale": 0.2}, "spark": {"shuffle_partitions": 2},
                             **extra})


def _stages() -> list[Any]:
    return [synth_stage(), *(ingest_stage(m) for m in MODALITIES)]


def _digests(stage_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(stage_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(stage_dir.rglob("*")) if p.is_file()}


def test_every_record_accounted_for(sample_run: SampleRun) -> None:
    run = sample_run.paths
    gt = GroundTruth.from_json(sample_run.run_dir / "synth/ground_truth.json")
    for modality in MODALITIES:
        manifest = verify_stage(run.stage(f"ingest/{modality}"))
        counts = manifest.row_counts
        assert counts["input"] == gt.n_records[modality]
        assert counts["quarantined"] == gt.n_bad[modality]
        assert counts["input"] == counts["curated"] + counts["quarantined"]
        by_reason: dict[str, int] = {}
        for bad in gt.bad_for(modality):
            by_reason[bad.reason] = by_reason.get(bad.reason, 0) + 1
        assert {k.split(".", 1)[1]: v for k, v in counts.items()
                if k.startswith("quarantined.")} == by_reason
        assert manifest.inputs == {"synth": read_manifest(run.stage("synth")).digest}
        assert published_files(run.stage(f"ingest/{modality}"), prefix="curated/")


@pytest.mark.unit
def test_stages_come_from_the_registry_and_rebuild_from_their_factory() -> None:
    for modality in MODALITIES:
        stage = ingest_stage(modality)
        assert stage.name == f"ingest/{modality}" and stage.kind == "spark"
        rebuilt = stage_from_factory(stage.factory, stage.args, stage.name)
        assert (rebuilt.name, rebuilt.inputs) == (stage.name, stage.inputs)
    with pytest.raises(ValueError, match="unknown modality 'nope'"):
        ingest_stage("nope")


def test_rerun_is_cached_and_a_forced_rerun_is_byte_identical(sample_run: SampleRun,
                                                              tmp_path: Path) -> None:
    # On a copy of the sample run's synth stage (others read the original run; the
    # outputs name their raw files, so the copy's ingest is not the original's bytes).
    run_dir = tmp_path / "runs" / sample_run.run_id
    shutil.copytree(sample_run.run_dir / "synth", run_dir / "synth")
    cfg = sample_run.cfg(root=tmp_path)
    outcomes = run_pipeline(cfg, _stages())
    assert [o.state for o in outcomes] == ["cached", "ran", "ran", "ran"]
    outcomes = run_pipeline(cfg, _stages())
    assert [o.state for o in outcomes] == ["cached"] * 4
    before = {m: _digests(run_dir / "ingest" / m) for m in MODALITIES}
    for modality in MODALITIES:  # forget the outputs: the stages must run again
        shutil.rmtree(run_dir / "ingest" / modality)
    outcomes = run_pipeline(cfg, _stages())
    assert [o.state for o in outcomes] == ["cached", "ran", "ran", "ran"]
    for modality in MODALITIES:
        after = _digests(run_dir / "ingest" / modality)
        assert after == before[modality], f"{modality} output differs between runs"


def test_no_card_number_anywhere(sample_run: SampleRun) -> None:
    """Grep every output of the run (Parquet bytes and decoded values, manifests, run.json)
    for every planted card number."""
    import pyarrow.parquet as pq

    gt = GroundTruth.from_json(sample_run.run_dir / "synth/ground_truth.json")
    cards = [c for c in gt.card_numbers if sum(ch.isdigit() for ch in c) >= 12]
    assert cards
    outputs = [p for p in sample_run.run_dir.rglob("*")
               if p.is_file() and "synth" not in p.relative_to(sample_run.run_dir).parts]
    assert outputs
    for path in outputs:
        blobs = [path.read_bytes()]
        if path.suffix == ".parquet":
            blobs.append(json.dumps(pq.read_table(path).to_pylist(), default=str).encode())
        for blob in blobs:
            for card in cards:
                assert card.encode() not in blob, f"card number leaked into {path}"


def test_killed_mid_write_publishes_nothing(tmp_path: Path, spark: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}

    def dies_on_second_write(*args: Any, **kwargs: Any) -> int:
        from pipeline.spark_io import write_parquet

        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill between the two writes")
        return write_parquet(*args, **kwargs)

    monkeypatch.setattr("pipeline.spark_io.write_parquet", dies_on_second_write)
    cfg = _cfg(tmp_path, modalities=["text"])
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, [synth_stage(), ingest_stage("text")])
    run = RunPaths(Location(str(tmp_path)), "t")
    assert is_published(run.stage("synth"))
    assert not is_published(run.stage("ingest/text"))
    assert not (tmp_path / "runs/t/ingest/text").exists()


def test_lost_record_fails_the_stage(tmp_path: Path, spark: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.ingest import text as text_module

    real = text_module.ingest_text

    def drops_one(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        result.curated = result.curated.limit(max(result.curated.count() - 1, 0))
        return result

    monkeypatch.setattr(text_module, "ingest_text", drops_one)
    with pytest.raises(StageFailed) as err:
        run_pipeline(_cfg(tmp_path, modalities=["text"]), [synth_stage(), ingest_stage("text")])
    assert isinstance(err.value.__cause__, ReconciliationError)
    assert not is_published(RunPaths(Location(str(tmp_path)), "t").stage("ingest/text"))


@pytest.mark.timeout(600)
def test_spark_submit_runs_the_job(sample_run: SampleRun, tmp_path: Path) -> None:
    """`spark-submit --master local[2] jobs/ingest.py` as a real subprocess, with the
    package shipped as a zip: its outputs equal the in-process run's, and neither its
    outputs nor its logs contain a planted card number."""
    dist = tmp_path / "dist"
    shutil.make_archive(str(dist / "pipeline"), "zip", ROOT, "pipeline")
    raw = sample_run.run_dir / "synth"
    config = tmp_path / "job.yaml"
    config.write_text(json.dumps({
        "run_id": sample_run.run_id, "storage": {"root": f"file://{tmp_path}/out"},
        "inputs": {m: {"paths": [str(raw / m)]} for m in MODALITIES},
        "spark": {"shuffle_partitions": 2},
    }))
    spark_submit = Path(sys.executable).parent / "spark-submit"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "PIPELINE_LOG_LEVEL": "DEBUG", "COLUMNS": "250",
           # Configured input paths need a key set explicitly; the development key, so
           # that the tokens equal those of the in-process run on the sample data.
           "PIPELINE_HMAC_KEY": DEV_HMAC_KEY.decode()}
    result = subprocess.run(
        [str(spark_submit), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
         "--py-files", str(dist / "pipeline.zip"), str(ROOT / "jobs/ingest.py"),
         "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=540)
    assert result.returncode == 0, result.stderr[-3000:]
    for modality in MODALITIES:
        ours = read_manifest(Location(f"{tmp_path}/out/runs/{sample_run.run_id}/ingest/{modality}"))
        reference = read_manifest(sample_run.paths.stage(f"ingest/{modality}"))
        assert ours.row_counts == reference.row_counts
        assert [(f.path, f.sha256) for f in ours.files] == [(f.path, f.sha256)
                                                             for f in reference.files]
    gt = GroundTruth.from_json(raw / "ground_truth.json")
    logs = result.stdout + result.stderr
    assert "ingest transactions" in logs  # the log lines are there, with their numbers
    for card in gt.card_numbers:
        if sum(ch.isdigit() for ch in card) >= 12:
            assert card not in logs, "a card number appeared in the job's log"
