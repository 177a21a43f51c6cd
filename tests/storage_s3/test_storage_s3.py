"""Stage publication, manifests, reports and checkpoints on s3:// (moto on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.storage import (
    MANIFEST_NAME,
    STAGING_DIR,
    Location,
    ManifestMismatchError,
    MissingManifestError,
    StageWriter,
    is_published,
    published_files,
    read_manifest,
    verify_stage,
)
from pipeline.train import checkpoint as ckpt

pytestmark = pytest.mark.integration


def _parquet_bytes(n: int) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": list(range(n)), "split": ["train"] * n}), buf)
    return buf.getvalue()


def _loc(bucket: Any, *parts: str) -> Location:
    """A place in the bucket, with the options (the endpoint) that reach it."""
    return Location(bucket.url(*parts), bucket.options)


def _stage(bucket: Any, files: dict[str, bytes], stage: Location) -> Any:
    writer = StageWriter(stage, "ingest/text")
    fs, staging = writer.staging.filesystem()
    for rel, body in files.items():
        fs.pipe_file(f"{staging}/{rel}", body)
    return writer.publish(row_counts={"curated": 5}, inputs={"synth": "abc"}, cache_key="k1")


def test_stage_publish_verify_and_tamper_detection(s3_bucket: Any) -> None:
    url = _loc(s3_bucket, "runs", "r1", "ingest", "text")
    with pytest.raises(MissingManifestError, match="did not finish publishing"):
        read_manifest(url)

    # A crashed attempt leaves a staging folder; the next writer removes it.
    crashed = StageWriter(url, "ingest/text")
    s3_bucket.fs.pipe_file(f"{crashed.staging_path}/curated/part-00000.parquet", b"partial")
    manifest = _stage(s3_bucket, {"curated/part-00000.parquet": _parquet_bytes(5),
                                  "quarantine/part-00000.parquet": _parquet_bytes(0),
                                  "curated/_SUCCESS": b""}, url)
    assert [f.path for f in manifest.files] == ["curated/part-00000.parquet",
                                                "quarantine/part-00000.parquet"]
    assert [f.rows for f in manifest.files] == [5, 0]
    keys = s3_bucket.keys()
    assert not any(f"/{STAGING_DIR}/" in k for k in keys), keys  # staging moved, stale gone
    assert f"{s3_bucket.name}/runs/r1/ingest/text/{MANIFEST_NAME}" in keys
    assert read_manifest(url) == manifest and is_published(url)
    assert verify_stage(url).digest == manifest.digest
    assert published_files(url, prefix="curated/") == [url / "curated/part-00000.parquet"]

    # Republishing replaces the old output as a whole: the old file is gone.
    second = _stage(s3_bucket, {"curated/part-00001.parquet": _parquet_bytes(3)}, url)
    assert [f.path for f in second.files] == ["curated/part-00001.parquet"]
    assert not s3_bucket.fs.exists(f"{s3_bucket.name}/runs/r1/ingest/text/curated/"
                                   f"part-00000.parquet")
    verify_stage(url)

    # Tampering: same size, other bytes; another size; a missing file; an edited manifest.
    fs, root = url.filesystem()
    target = f"{root}/curated/part-00001.parquet"
    good = fs.cat_file(target)
    fs.pipe_file(target, bytes([good[0] ^ 0xFF]) + good[1:])
    with pytest.raises(ManifestMismatchError, match=r"part-00001\.parquet sha256"):
        verify_stage(url)
    fs.pipe_file(target, good + b"x")
    with pytest.raises(ManifestMismatchError, match=f"has {len(good) + 1} bytes"):
        verify_stage(url)
    fs.rm(target)
    with pytest.raises(ManifestMismatchError, match="listed but missing"):
        verify_stage(url)
    fs.pipe_file(target, good)
    verify_stage(url)
    body = json.loads(fs.cat_file(f"{root}/{MANIFEST_NAME}"))
    body["row_counts"]["curated"] = 999
    fs.pipe_file(f"{root}/{MANIFEST_NAME}", json.dumps(body).encode())
    with pytest.raises(ManifestMismatchError, match="was edited"):
        read_manifest(url)
    assert not is_published(url)
    assert s3_bucket.objects_with_secrets() == []


def test_report_written_atomically(s3_bucket: Any) -> None:
    url = _loc(s3_bucket, "runs", "r1", "reports", "quality.json")
    report = {"stage": "quality", "rows": 12, "rates": {"quarantine": 0.25}}
    url.write_json(report)
    url.write_json({**report, "rows": 13})  # overwrite in place
    assert url.read_json() == {**report, "rows": 13}
    assert s3_bucket.keys() == [f"{s3_bucket.name}/runs/r1/reports/quality.json"]  # no .tmp
    assert s3_bucket.objects_with_secrets() == []
    # s3a:// (the root Spark needs) names the same objects on the Python side.
    assert url.at(url.url.replace("s3://", "s3a://", 1)).read_json()["rows"] == 13
    # The scan itself finds a leaked value (so an empty result above means something).
    _loc(s3_bucket, "runs", "r1", "reports", "leak.json").write_json({"env": dict(os.environ)})
    assert s3_bucket.objects_with_secrets() == [f"{s3_bucket.name}/runs/r1/reports/leak.json"]


class _Planted:
    """Unpickling this would call print: weights_only must refuse it."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (print, ("planted pickle ran",))


def _meta(step: int) -> ckpt.CheckpointMeta:
    return ckpt.CheckpointMeta(task="transactions", step=step, epoch=0, batch_in_epoch=step,
                               world_size=1, config_digest="c" * 64, data_digest="d" * 64,
                               metrics={"val_loss": 1.0 / step})


def test_checkpoints_written_listed_and_loaded_on_s3(s3_bucket: Any, tmp_path: Path) -> None:
    root_loc = _loc(s3_bucket, "runs", "r1", "checkpoints", "train_transactions")
    arrow_fs, arrow_root = root_loc.arrow_filesystem()
    weights = {step: {"w": torch.full((3, 2), float(step)), "b": torch.arange(2.0)}
               for step in (1, 2)}
    for step, state in weights.items():
        local = tmp_path / f"ckpt{step}"
        ckpt.write_checkpoint(local, state, {"optimizer": {"lr": torch.tensor(0.1)}},
                              _meta(step))
        ckpt.upload_checkpoint(str(local), arrow_fs, f"{arrow_root}/checkpoint_{step:08d}")
    # An upload that died before checkpoint.json: not a checkpoint.
    arrow_fs.create_dir(f"{arrow_root}/checkpoint_00000003", recursive=True)
    with arrow_fs.open_output_stream(f"{arrow_root}/checkpoint_00000003/model.pt") as out:
        out.write(b"half a model")

    fs, root = root_loc.filesystem()
    fs.invalidate_cache()
    listed = ckpt.list_checkpoints(fs, root)
    assert [m.step for _, m in listed] == [1, 2]
    latest = ckpt.latest_checkpoint(fs, root)
    assert latest is not None and latest[1].step == 2
    loaded = ckpt.load_checkpoint(fs, latest[0])
    for name, tensor in weights[2].items():
        torch.testing.assert_close(loaded.model_state[name], tensor)
    assert float(loaded.train_state["optimizer"]["lr"]) == pytest.approx(0.1)

    # Same-size corruption of the newest: skipped by latest, refused by load.
    model_key = f"{latest[0]}/{ckpt.MODEL_FILE}"
    data = fs.cat_file(model_key)
    fs.pipe_file(model_key, data[:-1] + bytes([data[-1] ^ 0x01]))
    fallback = ckpt.latest_checkpoint(fs, root)
    assert fallback is not None and fallback[1].step == 1
    with pytest.raises(ckpt.CorruptCheckpointError, match="refusing to load"):
        ckpt.load_checkpoint(fs, latest[0])

    # A pickle that would run code, with a record that matches it: weights_only refuses.
    buf = io.BytesIO()
    torch.save({"w": _Planted()}, buf)
    planted = buf.getvalue()
    meta = ckpt.read_meta(fs, fallback[0])
    files = {**meta.files, ckpt.MODEL_FILE: {"size": len(planted),
                                             "sha256": ckpt._sha256(planted)}}
    fs.pipe_file(f"{fallback[0]}/{ckpt.MODEL_FILE}", planted)
    fs.pipe_file(f"{fallback[0]}/{ckpt.META_FILE}",
                 ckpt.CheckpointMeta(**{**meta.__dict__, "files": files}).to_json().encode())
    with pytest.raises(ckpt.CorruptCheckpointError, match="weights_only"):
        ckpt.load_model_state(fs, fallback[0])
    assert s3_bucket.objects_with_secrets() == []
