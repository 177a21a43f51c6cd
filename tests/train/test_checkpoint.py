"""Checkpoints: round trip, RNG states, commit record, refusal of bad or foreign ones."""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem

from pipeline.train import checkpoint as ckpt

pytestmark = pytest.mark.unit

FS = LocalFileSystem()


def _meta(step: int = 10, data_digest: str = "d" * 64, config_digest: str = "c" * 64,
          **extra: object) -> ckpt.CheckpointMeta:
    return ckpt.CheckpointMeta(task="transactions", step=step, epoch=1, batch_in_epoch=4,
                               world_size=2, config_digest=config_digest,
                               data_digest=data_digest, metrics={"val_loss": 0.5},
                               history=({"epoch": 1.0, "val_loss": 0.5},),
                               resume_config={"train.seed": 0}, **extra)  # type: ignore[arg-type]


def _write(path: Path, step: int = 10, **meta: object) -> ckpt.CheckpointMeta:
    model = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))])
    state = {"optimizer": opt.state_dict(), "rng": [ckpt.capture_rng()], "epoch_sums": {}}
    return ckpt.write_checkpoint(path, model, state, _meta(step, **meta))  # type: ignore[arg-type]


def test_round_trip_and_record_written_last(tmp_path: Path) -> None:
    meta = _write(tmp_path / "c1")
    names = sorted(os.listdir(tmp_path / "c1"))
    assert names == [ckpt.META_FILE, ckpt.MODEL_FILE, ckpt.STATE_FILE]
    assert set(meta.files) == {ckpt.MODEL_FILE, ckpt.STATE_FILE}
    # The record lists size and hash of the files, so it can only be written after them.
    record = json.loads((tmp_path / "c1" / ckpt.META_FILE).read_text())
    assert record["files"][ckpt.MODEL_FILE]["size"] == (tmp_path / "c1" /
                                                         ckpt.MODEL_FILE).stat().st_size
    loaded = ckpt.load_checkpoint(FS, str(tmp_path / "c1"))
    assert loaded.meta.step == 10 and loaded.meta.batch_in_epoch == 4
    assert loaded.meta.history == ({"epoch": 1.0, "val_loss": 0.5},)
    torch.testing.assert_close(loaded.model_state["w"],
                               torch.arange(6, dtype=torch.float32).reshape(2, 3))


def test_rng_states_restore_exactly() -> None:
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = ckpt.capture_rng(gen)
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    ckpt.restore_rng(state, gen)
    second = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=gen))
    torch.testing.assert_close(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    torch.testing.assert_close(first[3], second[3])


def test_incomplete_checkpoint_is_ignored(tmp_path: Path) -> None:
    _write(tmp_path / "checkpoint_00000004", step=4)
    _write(tmp_path / "checkpoint_00000008", step=8)
    os.remove(tmp_path / "checkpoint_00000008" / ckpt.META_FILE)  # write cut short
    (tmp_path / "checkpoint_00000012").mkdir()  # only the folder
    with pytest.raises(ckpt.IncompleteCheckpointError, match="never completely written"):
        ckpt.read_meta(FS, str(tmp_path / "checkpoint_00000008"))
    assert [m.step for _, m in ckpt.list_checkpoints(FS, str(tmp_path))] == [4]
    latest = ckpt.latest_checkpoint(FS, str(tmp_path))
    assert latest is not None and latest[1].step == 4


def test_corrupted_file_is_refused_and_skipped(tmp_path: Path) -> None:
    _write(tmp_path / "checkpoint_00000004", step=4)
    _write(tmp_path / "checkpoint_00000008", step=8)
    model = tmp_path / "checkpoint_00000008" / ckpt.MODEL_FILE
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes
    model.write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match="refusing to load"):
        ckpt.load_checkpoint(FS, str(tmp_path / "checkpoint_00000008"))
    latest = ckpt.latest_checkpoint(FS, str(tmp_path))
    assert latest is not None and latest[1].step == 4


class _Exploit:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint_00000010"
    _write(folder)
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Exploit(marker)})
    (folder / ckpt.MODEL_FILE).write_bytes(payload)
    # First line of defence: the file no longer matches its record.
    with pytest.raises(ckpt.CorruptCheckpointError, match="sha256"):
        ckpt.load_checkpoint(FS, str(folder))
    # An attacker who also rewrites the record still meets torch.load(weights_only=True).
    record = json.loads((folder / ckpt.META_FILE).read_text())
    record["files"][ckpt.MODEL_FILE] = {"size": len(payload),
                                        "sha256": ckpt._sha256(payload)}
    (folder / ckpt.META_FILE).write_text(json.dumps(record))
    with pytest.raises(ckpt.CorruptCheckpointError, match="weights_only"):
        ckpt.load_checkpoint(FS, str(folder))
    with pytest.raises(ckpt.CorruptCheckpointError, match="weights_only"):
        ckpt.load_model_state(FS, str(folder))
    assert not marker.exists(), "the pickle's payload ran"


def test_mismatched_data_or_config_refuses_to_resume(tmp_path: Path) -> None:
    meta = _write(tmp_path / "c", data_digest="a" * 64)
    with pytest.raises(ckpt.CheckpointMismatchError) as info:
        ckpt.check_resumable(meta, "c", meta.config_digest, "b" * 64, meta.resume_config)
    assert "a" * 64 in str(info.value) and "b" * 64 in str(info.value)
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"train.seed: 0 -> 1"):
        ckpt.check_resumable(meta, "c", "e" * 64, meta.data_digest, {"train.seed": 1})
    ckpt.check_resumable(meta, "c", meta.config_digest, meta.data_digest, meta.resume_config)


def test_upload_writes_record_last(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    _write(tmp_path / "local")
    order: list[str] = []
    fs = pafs.LocalFileSystem()
    real_open = fs.open_output_stream

    class Spy:
        def create_dir(self, path: str, recursive: bool = True) -> None:
            fs.create_dir(path, recursive=recursive)

        def open_output_stream(self, path: str) -> object:
            order.append(os.path.basename(path))
            return real_open(path)

    ckpt.upload_checkpoint(str(tmp_path / "local"), Spy(), str(tmp_path / "remote"))
    assert order[-1] == ckpt.META_FILE and len(order) == 3
    assert ckpt.load_checkpoint(FS, str(tmp_path / "remote")).meta.step == 10
