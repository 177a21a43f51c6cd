"""Training checkpoints: a folder of tensors plus `checkpoint.json`, written last.

Layout of one checkpoint (a Ray Train checkpoint folder under `<run>/checkpoints/`):

    model.pt          the model's state_dict (unwrapped from DDP), CPU tensors
    train_state.pt    optimizer and LR-scheduler state, the running sums of the epoch, and
                      the RNG states of every rank (torch, numpy, python, CUDA, and the
                      per-rank augmentation generator), all as tensors and plain lists
    checkpoint.json   the commit record: task, step, epoch, batches already consumed in
                      that epoch, world size, config digest, data-manifest digest, metrics,
                      per-epoch history, and the size + SHA-256 of the two files above

`checkpoint.json` is written after the files it describes, locally and again when the
folder is uploaded (`upload_checkpoint`), so a folder without it is an unfinished write and
is skipped. Loading re-hashes each file against the record, then uses
`torch.load(weights_only=True)`, which unpickles tensors and plain containers only: a
planted pickle that would run code is refused before anything in it executes.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import posixpath
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fsspec import AbstractFileSystem

log = logging.getLogger(__name__)

META_FILE = "checkpoint.json"
MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
DATA_FILES = (MODEL_FILE, STATE_FILE)
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used."""


class IncompleteCheckpointError(CheckpointError):
    """The folder has no checkpoint.json: its write never finished."""


class CorruptCheckpointError(CheckpointError):
    """A file does not match its record, or holds something other than tensors."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made from other data or another training configuration."""


@dataclass(frozen=True)
class CheckpointMeta:
    """The contents of checkpoint.json."""

    task: str
    step: int
    epoch: int  # the epoch to continue in
    batch_in_epoch: int  # batches of that epoch already trained on
    world_size: int
    config_digest: str
    data_digest: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    history: tuple[Mapping[str, float], ...] = ()
    files: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    resume_config: Mapping[str, Any] = field(default_factory=dict)
    task_state: Mapping[str, Any] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    created_at: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        body = json.loads(text)
        body["history"] = tuple(body.get("history", ()))
        return cls(**body)


@dataclass(frozen=True)
class LoadedCheckpoint:
    meta: CheckpointMeta
    model_state: dict[str, torch.Tensor]
    train_state: dict[str, Any]


# --- RNG state as tensors and lists (so that weights_only loading accepts it) -------------

def capture_rng(generator: torch.Generator | None = None) -> dict[str, Any]:
    """This process's RNG states: torch (CPU and CUDA), numpy, python, `generator`."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Inverse of `capture_rng`."""
    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


# --- writing ----------------------------------------------------------------------------

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(directory: str | Path, model_state: Mapping[str, torch.Tensor],
                     train_state: Mapping[str, Any], meta: CheckpointMeta) -> CheckpointMeta:
    """Write a checkpoint into the local folder `directory`; checkpoint.json goes last."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for name, obj in ((MODEL_FILE, dict(model_state)), (STATE_FILE, dict(train_state))):
        buf = io.BytesIO()
        torch.save(obj, buf)
        data = buf.getvalue()
        (root / name).write_bytes(data)
        files[name] = {"size": len(data), "sha256": _sha256(data)}
    final = CheckpointMeta(**{**asdict(meta), "files": files,
                              "created_at": datetime.now(UTC).isoformat(timespec="seconds")})
    tmp = root / f".{META_FILE}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(final.to_json(), encoding="utf-8")
    os.replace(tmp, root / META_FILE)
    return final


def upload_checkpoint(local_dir: str, dest_fs: Any, dest_path: str) -> None:
    """Copy a local checkpoint folder to `dest_path` on a pyarrow filesystem, data files
    first and checkpoint.json last, so the remote copy is committed by its record too."""
    dest_fs.create_dir(dest_path, recursive=True)
    names = sorted(os.listdir(local_dir), key=lambda n: (n == META_FILE, n))
    for name in names:
        if name.startswith("."):
            continue
        with open(os.path.join(local_dir, name), "rb") as src, \
                dest_fs.open_output_stream(posixpath.join(dest_path, name)) as dst:
            while chunk := src.read(4 * 1024 * 1024):
                dst.write(chunk)


def replace_checkpoint(local_dir: str, dest_fs: Any, dest_path: str) -> None:
    """`upload_checkpoint`, after removing whatever an interrupted attempt left at
    `dest_path` (a pyarrow filesystem path)."""
    import pyarrow.fs as pafs

    if dest_fs.get_file_info(dest_path).type != pafs.FileType.NotFound:
        dest_fs.delete_dir(dest_path)
    upload_checkpoint(local_dir, dest_fs, dest_path)


def retired(checkpoints: Sequence[tuple[str, CheckpointMeta]], keep: int) -> list[str]:
    """Of `checkpoints` (oldest first, as `list_checkpoints` gives them), the paths that
    Ray Train's `CheckpointConfig(num_to_keep=keep, checkpoint_score_attribute="val_loss",
    checkpoint_score_order="min")` deletes: all but the `keep` with the lowest val_loss
    (the newer first among equals), and never the newest, which a resume needs."""
    if len(checkpoints) <= keep:
        return []
    def score(meta: CheckpointMeta) -> float:  # NaN or missing ranks last
        value = float(meta.metrics.get("val_loss", math.inf))
        return math.inf if math.isnan(value) else value

    newest = checkpoints[-1][0]
    ranked = sorted((score(meta), -meta.step, path) for path, meta in checkpoints)
    kept = {path for _, _, path in ranked[:keep]} | {newest}
    return [path for path, _ in checkpoints if path not in kept]


# --- reading ----------------------------------------------------------------------------

def read_meta(fs: AbstractFileSystem, path: str) -> CheckpointMeta:
    """The record of the checkpoint at `path`; `IncompleteCheckpointError` without one."""
    try:
        with fs.open(posixpath.join(path, META_FILE), "rb") as fh:
            text = fh.read().decode()
    except FileNotFoundError:
        raise IncompleteCheckpointError(
            f"{path} has no {META_FILE}: the checkpoint was never completely written"
        ) from None
    try:
        meta = CheckpointMeta.from_json(text)
    except (ValueError, TypeError) as exc:
        raise CorruptCheckpointError(f"{path}/{META_FILE} is not a valid record: {exc}"
                                     ) from exc
    if meta.format != FORMAT_VERSION:
        raise CorruptCheckpointError(
            f"{path}: checkpoint format {meta.format}, this code reads {FORMAT_VERSION}")
    return meta


def _load_file(fs: AbstractFileSystem, path: str, name: str, meta: CheckpointMeta) -> Any:
    with fs.open(posixpath.join(path, name), "rb") as fh:
        data = fh.read()
    expected = meta.files.get(name, {})
    if len(data) != expected.get("size") or _sha256(data) != expected.get("sha256"):
        raise CorruptCheckpointError(
            f"{path}/{name}: {len(data)} bytes, sha256 {_sha256(data)[:12]}; the checkpoint "
            f"record says {expected.get('size')} bytes, sha256 "
            f"{str(expected.get('sha256'))[:12]}: refusing to load it")
    try:
        # weights_only: tensors and plain containers only, never arbitrary objects.
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends, whatever torch raises
        raise CorruptCheckpointError(
            f"{path}/{name} holds something other than tensors and plain data; refused by "
            f"torch.load(weights_only=True): {str(exc).splitlines()[0]}") from exc


def load_checkpoint(fs: AbstractFileSystem, path: str) -> LoadedCheckpoint:
    """Read, verify and load a checkpoint (tensors land on the CPU)."""
    meta = read_meta(fs, path)
    return LoadedCheckpoint(meta, _load_file(fs, path, MODEL_FILE, meta),
                            _load_file(fs, path, STATE_FILE, meta))


def load_model_state(fs: AbstractFileSystem, path: str) -> dict[str, torch.Tensor]:
    """Only the verified model weights of a checkpoint (for evaluation and comparisons)."""
    meta = read_meta(fs, path)
    state: dict[str, torch.Tensor] = _load_file(fs, path, MODEL_FILE, meta)
    return state


def list_checkpoints(fs: AbstractFileSystem, root: str) -> list[tuple[str, CheckpointMeta]]:
    """Complete checkpoints directly under `root`, oldest first (by step, then time).

    Folders without checkpoint.json, with an unreadable one, or whose files are missing or
    of the wrong size are skipped with a log line; hashes are checked when loading."""
    if not fs.exists(root):
        return []
    found: list[tuple[str, CheckpointMeta]] = []
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        if entry.get("type") != "directory":
            continue
        path = entry["name"].rstrip("/")
        try:
            meta = read_meta(fs, path)
            for name in DATA_FILES:
                size = fs.size(posixpath.join(path, name))
                if size != meta.files.get(name, {}).get("size"):
                    raise CorruptCheckpointError(f"{path}/{name} has {size} bytes, record "
                                                 f"says {meta.files.get(name)}")
        except FileNotFoundError as exc:
            log.warning("skipping checkpoint %s: a file is missing (%s)", path, exc)
            continue
        except CheckpointError as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            continue
        found.append((path, meta))
    found.sort(key=lambda pm: (pm[1].step, pm[1].created_at, pm[0]))
    return found


def latest_checkpoint(fs: AbstractFileSystem, root: str) -> tuple[str, CheckpointMeta] | None:
    """The newest complete checkpoint under `root` whose files hash correctly, or None."""
    for path, meta in reversed(list_checkpoints(fs, root)):
        try:
            for name in DATA_FILES:
                with fs.open(posixpath.join(path, name), "rb") as fh:
                    if _sha256(fh.read()) != meta.files[name]["sha256"]:
                        raise CorruptCheckpointError(f"{path}/{name} does not match its hash")
        except (CheckpointError, FileNotFoundError) as exc:
            log.warning("skipping checkpoint %s: %s", path, exc)
            continue
        return path, meta
    return None


def check_data(meta: CheckpointMeta, path: str, data_digest: str) -> None:
    """Refuse to resume from a checkpoint trained on other data (naming both digests)."""
    if meta.data_digest != data_digest:
        raise CheckpointMismatchError(
            f"checkpoint {path} (step {meta.step}) was trained on data with manifest digest "
            f"{meta.data_digest}, but the current data has manifest digest {data_digest}; "
            f"refusing to resume. Use a new run id, or delete {posixpath.dirname(path)} to "
            f"train from scratch on the new data.")


def check_resumable(meta: CheckpointMeta, path: str, config_digest: str, data_digest: str,
                    resume_config: Mapping[str, Any]) -> None:
    """Refuse to resume from a checkpoint made from other data or another configuration."""
    check_data(meta, path, data_digest)
    if meta.config_digest != config_digest:
        changed = sorted(k for k in set(meta.resume_config) | set(resume_config)
                         if meta.resume_config.get(k) != resume_config.get(k))
        detail = ", ".join(f"{k}: {meta.resume_config.get(k)!r} -> {resume_config.get(k)!r}"
                           for k in changed) or "task settings differ"
        raise CheckpointMismatchError(
            f"checkpoint {path} (step {meta.step}) was made with training config digest "
            f"{meta.config_digest[:12]}, the current one is {config_digest[:12]} ({detail}); "
            f"refusing to resume. Use a new run id to train with the new settings.")
