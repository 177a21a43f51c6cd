from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.storage import (
    MANIFEST_NAME,
    Location,
    ManifestMismatchError,
    MissingManifestError,
    RunPaths,
    StageWriter,
    cache_key,
    code_version,
    is_published,
    published_files,
    read_manifest,
    schema_fingerprint,
    verify_stage,
)

pytestmark = pytest.mark.unit


@pytest.fixture(params=["file", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "file":
        return Location(f"file://{tmp_path}")
    return Location(f"memory://test-{uuid.uuid4().hex[:8]}")


def _write_stage(stage: Location, rows: int = 3, key: str = "k1") -> None:
    writer = StageWriter(stage, "ingest/text")
    fs, staging = writer.staging.filesystem()
    table = pa.table({"doc_id": [f"d{i}" for i in range(rows)], "n": list(range(rows))})
    with fs.open(f"{staging}/part-00000.parquet", "wb") as fh:
        pq.write_table(table, fh)
    with fs.open(f"{staging}/quarantine/part-00000.parquet", "wb") as fh:
        pq.write_table(table.slice(0, 1), fh)
    writer.publish(row_counts={"curated": rows, "quarantined": 1},
                   schemas={"curated": schema_fingerprint(table.schema)},
                   inputs={"synth": "abc"}, cache_key=key)


def test_publish_then_read(root: Location) -> None:
    stage = RunPaths(root, "r1").stage("ingest/text")
    _write_stage(stage)
    manifest = verify_stage(stage)
    assert [f.path for f in manifest.files] == ["part-00000.parquet",
                                                 "quarantine/part-00000.parquet"]
    assert manifest.files[0].rows == 3 and manifest.files[1].rows == 1
    assert manifest.row_counts == {"curated": 3, "quarantined": 1}
    assert manifest.inputs == {"synth": "abc"}
    assert manifest.code_version == code_version()
    assert published_files(stage, suffix=".parquet", prefix="part") == [
        stage / "part-00000.parquet"]
    fs, path = stage.filesystem()
    assert not fs.exists(f"{path.rsplit('/', 1)[0]}/_staging/text") and not fs.glob(
        f"{path.rsplit('/', 1)[0]}/_staging/text-*")


def test_unpublished_stage_is_refused(root: Location) -> None:
    stage = RunPaths(root, "r1").stage("ingest/text")
    writer = StageWriter(stage, "ingest/text")
    fs, staging = writer.staging.filesystem()
    with fs.open(f"{staging}/part-00000.parquet", "wb") as fh:
        fh.write(b"half a file")
    # The process "dies" here: no publish.
    with pytest.raises(MissingManifestError, match="did not finish publishing"):
        read_manifest(stage)
    assert not is_published(stage)
    # The next attempt clears the stale staging folder.
    StageWriter(stage, "ingest/text").abort()
    assert fs.glob(f"{staging.rsplit('/', 1)[0]}/*") == []


def _publish_then_die(stage: Location) -> None:
    writer = StageWriter(stage, "ingest/text")
    fs, staging = writer.staging.filesystem()
    with fs.open(f"{staging}/part-00000.parquet", "wb") as fh:
        fh.write(b"x" * 1000)
    os._exit(9)  # killed before publish


def test_killed_process_leaves_nothing_a_reader_accepts(tmp_path: Path) -> None:
    stage = RunPaths(Location(f"file://{tmp_path}"), "r1").stage("ingest/text")
    proc = multiprocessing.get_context("spawn").Process(target=_publish_then_die, args=(stage,))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    assert not is_published(stage)
    assert not (tmp_path / "runs/r1/ingest/text").exists()


def test_republish_replaces_old_output(root: Location) -> None:
    stage = RunPaths(root, "r1").stage("ingest/text")
    _write_stage(stage, rows=3, key="k1")
    _write_stage(stage, rows=5, key="k2")
    manifest = verify_stage(stage)
    assert manifest.cache_key == "k2" and manifest.row_counts["curated"] == 5


def test_modified_file_is_detected(root: Location) -> None:
    stage = RunPaths(root, "r1").stage("ingest/text")
    _write_stage(stage)
    fs, path = stage.filesystem()
    target = f"{path}/part-00000.parquet"
    data = bytearray(fs.cat_file(target))
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    fs.pipe_file(target, bytes(data))
    with pytest.raises(ManifestMismatchError, match=r"part-00000\.parquet sha256"):
        verify_stage(stage)
    fs.pipe_file(target, b"short")
    with pytest.raises(ManifestMismatchError, match="has 5 bytes"):
        verify_stage(stage)


def test_edited_manifest_is_detected(tmp_path: Path) -> None:
    stage = RunPaths(Location(f"file://{tmp_path}"), "r1").stage("ingest/text")
    _write_stage(stage)
    manifest_file = tmp_path / "runs/r1/ingest/text" / MANIFEST_NAME
    body = json.loads(manifest_file.read_text())
    body["row_counts"]["curated"] = 999
    manifest_file.write_text(json.dumps(body))
    with pytest.raises(ManifestMismatchError, match="was edited"):
        read_manifest(stage)


def test_manifest_is_deterministic(tmp_path: Path) -> None:
    a = RunPaths(Location(f"file://{tmp_path}/a"), "r").stage("s")
    b = RunPaths(Location(f"file://{tmp_path}/b"), "r").stage("s")
    _write_stage(a)
    _write_stage(b)
    assert (tmp_path / "a/runs/r/s" / MANIFEST_NAME).read_bytes() == (
        tmp_path / "b/runs/r/s" / MANIFEST_NAME).read_bytes()


def test_cache_key_depends_on_every_part() -> None:
    base = cache_key("ingest", "v1", {"a": 1}, {"synth": "d1"})
    assert base == cache_key("ingest", "v1", {"a": 1}, {"synth": "d1"})
    assert base != cache_key("dedup", "v1", {"a": 1}, {"synth": "d1"})
    assert base != cache_key("ingest", "v2", {"a": 1}, {"synth": "d1"})
    assert base != cache_key("ingest", "v1", {"a": 2}, {"synth": "d1"})
    assert base != cache_key("ingest", "v1", {"a": 1}, {"synth": "d2"})


def test_schema_fingerprint_ignores_metadata() -> None:
    s1 = pa.schema([("a", pa.int64()), ("b", pa.string())])
    assert schema_fingerprint(s1) == schema_fingerprint(s1.with_metadata({b"x": b"y"}))
    assert schema_fingerprint(s1) != schema_fingerprint(pa.schema([("a", pa.int32()),
                                                                   ("b", pa.string())]))


def test_relative_paths_and_file_urls_become_absolute(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.storage import to_url

    monkeypatch.chdir(tmp_path)
    assert to_url("file://./data") == f"file://{tmp_path}/data"
    assert to_url("data/x") == f"file://{tmp_path}/data/x"
    assert to_url("file:///abs/x") == "file:///abs/x"
    assert to_url("s3://bucket/x") == "s3://bucket/x"
    assert RunPaths(Location("file://./data"), "r").run_url == f"file://{tmp_path}/data/runs/r"


def test_content_digest_ignores_code_version_but_not_data(tmp_path: Path) -> None:
    import dataclasses

    stage = RunPaths(Location(f"file://{tmp_path}"), "r").stage("s")
    _write_stage(stage)
    manifest = read_manifest(stage)
    recoded = dataclasses.replace(manifest, code_version="other", cache_key="other")
    assert recoded.digest != manifest.digest
    assert recoded.content_digest == manifest.content_digest
    changed = dataclasses.replace(manifest, row_counts={"curated": 4, "quarantined": 1})
    assert changed.content_digest != manifest.content_digest


def test_location_carries_its_options_everywhere(root: Location) -> None:
    """A child, a sibling URL and a pickled copy keep the options; JSON writes are atomic
    (no temporary file left) and `files()` lists what is below."""
    loc = Location(root.url + "/", {"skip_instance_cache": True})
    assert loc.url == root.url  # no trailing slash
    run = RunPaths(loc, "r")
    stage = run.stage("ingest/text")
    assert stage.url == f"{root.url}/runs/r/ingest/text" and stage.options == loc.options
    assert (run.run / "ingest/text") == stage == run.run.join("ingest", "text")
    assert stage.at(f"{root.url}/x").options == loc.options
    assert pickle.loads(pickle.dumps(stage)) == stage
    assert hash(stage) == hash(run.stage("ingest/text"))
    run.run_json.write_json({"b": 1, "a": [1, 2]})
    run.run_json.write_json({"b": 2})  # replaced in place
    assert run.run_json.read_json() == {"b": 2}
    assert [f.name for f in run.run.files()] == ["run.json"]  # no temporary left behind
    assert run.reports.files() == [] and not run.reports.exists()
    with pytest.raises(FileNotFoundError):
        (run.run / "missing.json").read_json()
    run.run.remove()
    assert not run.run_json.exists()
