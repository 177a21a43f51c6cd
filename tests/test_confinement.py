"""Run ids and manifest entries stay inside their folders; a corrupt manifest reads as
"not published" (issue 13, item 7)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.orchestrator.plan import plan
from pipeline.orchestrator.stages import Stage, StageResult
from pipeline.storage import (
    MANIFEST_NAME,
    CorruptManifestError,
    FileEntry,
    Location,
    Manifest,
    RunPaths,
    StageWriter,
    entry_path_problem,
    is_published,
    published_files,
    read_manifest,
    run_id_problem,
    verify_stage,
)

pytestmark = pytest.mark.unit

BAD_RUN_IDS = ["/abs", "../..", "..", ".", "a/b", "", "run id", "r\\x", "r\x00", "~/x"]
GOOD_RUN_IDS = ["local", "r1", "2026-12-07_run.3", "A-b_c.d", "..x", "x.."]


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_bad_run_ids_are_refused_by_config_and_run_paths(run_id: str,
                                                         tmp_path: Path) -> None:
    assert run_id_problem(run_id) is not None
    if run_id:  # `--set run_id=` means "no run id": the default 'local'
        with pytest.raises(ConfigError, match=r"run_id: .* is not a valid run id"):
            load_config(None, [f"storage.root=file://{tmp_path}", f"run_id={run_id}"])
    with pytest.raises(ValueError, match="not a valid run id"):
        RunPaths(Location(f"file://{tmp_path}"), run_id)


@pytest.mark.parametrize("run_id", GOOD_RUN_IDS)
def test_good_run_ids_stay_under_runs(run_id: str, tmp_path: Path) -> None:
    assert run_id_problem(run_id) is None
    cfg = load_config(None, [f"storage.root=file://{tmp_path}", f"run_id={run_id}"])
    assert cfg.run_id == run_id
    assert RunPaths(Location(f"file://{tmp_path}"), run_id).run_url == \
        f"file://{tmp_path}/runs/{run_id}"


def _publish(stage: Location) -> None:
    writer = StageWriter(stage, "ingest/text")
    (writer.staging / "part-0.bin").write_bytes(b"data")
    writer.publish(row_counts={"curated": 1})


def _rewrite_manifest(stage: Location, path: str) -> None:
    """Point the manifest's entry at `path`, with a digest recomputed so only the path is
    wrong (an attacker who can write the manifest can also recompute its digest)."""
    manifest = read_manifest(stage)
    entry = manifest.files[0]
    forged = Manifest(stage=manifest.stage, files=(FileEntry(path, entry.size, entry.sha256),),
                      row_counts=manifest.row_counts)
    (stage / MANIFEST_NAME).write_bytes(forged.to_json().encode())


@pytest.mark.parametrize("path", ["../../../../etc/passwd", "/etc/passwd", "a/../../x",
                                  "file:///etc/passwd", "s3://bucket/key", "./part-0.bin",
                                  "a//b", "..\\..\\x", ""])
def test_manifest_entries_outside_the_stage_are_refused(path: str, tmp_path: Path) -> None:
    assert entry_path_problem(path) is not None
    stage = RunPaths(Location(f"file://{tmp_path}"), "r1").stage("ingest/text")
    _publish(stage)
    _rewrite_manifest(stage, path)
    with pytest.raises(CorruptManifestError, match="inside the stage folder"):
        published_files(stage)
    with pytest.raises(CorruptManifestError):
        verify_stage(stage)
    assert not is_published(stage)


def test_a_manifest_built_in_code_is_confined_too(tmp_path: Path) -> None:
    stage = RunPaths(Location(f"file://{tmp_path}"), "r1").stage("ingest/text")
    _publish(stage)
    assert entry_path_problem("part-0.bin") is None
    assert published_files(stage) == [stage / "part-0.bin"]
    from pipeline.storage import _entry_location

    forged = Manifest(stage="ingest/text", files=(FileEntry("../x", 1, "0"),))
    with pytest.raises(CorruptManifestError):
        _entry_location(stage, forged, "../x")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"stage": "ingest/text"}',
                                  '{"stage": "s", "files": [{"path": "a"}]}', "\udcff"])
def test_corrupt_manifest_reads_as_not_published(text: str, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    root = Location(f"file://{tmp_path}")
    cfg = load_config(None, [f"storage.root={root.url}", "run_id=r1"])
    stage = RunPaths(root, "r1").stage("ingest/text")
    _publish(stage)
    (stage / MANIFEST_NAME).write_bytes(text.encode("utf-8", "surrogateescape"))
    with caplog.at_level(logging.WARNING, logger="pipeline.storage"):
        assert not is_published(stage)
    assert "read as not published" in caplog.text
    with pytest.raises(CorruptManifestError):
        read_manifest(stage)
    fake = Stage(name="ingest/text", inputs=(), run=lambda ctx: StageResult(),
                 config_of=lambda c: {})
    [entry] = plan(cfg, [fake])
    assert entry.decision == "run" and "corrupt" in entry.reason
    assert json.loads(json.dumps(entry.to_dict()))["stage"] == "ingest/text"
