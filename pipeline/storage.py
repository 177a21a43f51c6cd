"""fsspec paths, atomic stage publication, manifests, content digests, cache keys.

A stage writes into a private staging folder, then `StageWriter.publish` moves the files
into the stage folder and writes `_MANIFEST.json` last. The manifest is the commit record:
a reader asks for it first (`read_manifest`) and reads only the files it lists, so a stage
that crashed before publishing, or one whose old output is being replaced, is never
mistaken for a whole output. On object stores the move is a copy, but the manifest is a
single PUT, so the same rule holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

import pipeline

log = logging.getLogger(__name__)

MANIFEST_NAME = "_MANIFEST.json"
STAGING_DIR = "_staging"
_CHUNK = 4 * 1024 * 1024


class MissingManifestError(FileNotFoundError):
    """A stage output has no manifest: the stage never finished publishing."""


class ManifestMismatchError(ValueError):
    """A published file no longer matches the digest or size its manifest recorded."""


def to_url(path_or_url: str | Path) -> str:
    """Turn a local path, or a relative `file://./x` URL, into an absolute file:// URL;
    leave other URLs alone. (Spark and Ray workers run in other directories, so a
    relative path must be resolved where the user typed it.)"""
    text = str(path_or_url)
    if text.startswith("file://") and not text.startswith("file:///"):
        return "file://" + str(Path(text[len("file://"):]).resolve())
    if "://" in text:
        return text
    return "file://" + str(Path(text).resolve())


def filesystem(url: str,
               options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it."""
    url = to_url(url)
    opts = dict(options or {})
    if url.startswith("file://"):
        opts.setdefault("auto_mkdir", True)  # as object stores behave: no mkdir before write
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with '/', whatever the filesystem."""
    return posixpath.join(to_url(url).rstrip("/"), *parts)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    """Stable JSON bytes (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable).encode()


def digest_of(obj: Any) -> str:
    """SHA-256 of the canonical JSON of `obj` (dataclasses included)."""
    return sha256_bytes(canonical_json(obj))


def _jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def file_digest(fs: AbstractFileSystem, path: str) -> str:
    """Streaming SHA-256 of one file."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def code_version() -> str:
    """Package version plus a digest of the package's own source files.

    Hashing the sources (not a git sha) works in a wheel or a zip shipped to executors, and
    changes whenever any code that could change a stage's output changes.
    """
    h = hashlib.sha256()
    for rel, data in _package_sources(Path(pipeline.__file__).parent):
        h.update(rel.encode())
        h.update(data)
    return f"{pipeline.__version__}+{h.hexdigest()[:12]}"


def _package_sources(root: Path) -> list[tuple[str, bytes]]:
    """(relative path, bytes) of every .py file of the package, in path order, whether it
    was imported from a folder or from a zip (spark-submit --py-files puts the zip on the
    driver's sys.path: `root` is then `<archive>.zip/pipeline`)."""
    if root.is_dir():
        return [(src.relative_to(root).as_posix(), src.read_bytes())
                for src in sorted(root.rglob("*.py"))]
    archive = next((p for p in root.parents if p.is_file()), None)
    if archive is None:
        raise RuntimeError(f"cannot read the pipeline package's sources at {root}")
    import zipfile

    inner = root.relative_to(archive).as_posix() + "/"
    with zipfile.ZipFile(archive) as zf:
        members = [(n[len(inner):], n) for n in zf.namelist()
                   if n.startswith(inner) and n.endswith(".py")]
        # Sorted as Path objects sort (part by part), so both layouts hash alike.
        members.sort(key=lambda m: PurePosixPath(m[0]).parts)
        return [(rel, zf.read(name)) for rel, name in members]


def cache_key(stage: str, version: str, stage_config: Any, inputs: Mapping[str, str]) -> str:
    """Digest of (stage name, code version, the stage's config, its inputs' manifest digests)."""
    return digest_of({"stage": stage, "code": version, "config": stage_config,
                      "inputs": dict(sorted(inputs.items()))})


def schema_fingerprint(schema: Any) -> str:
    """Digest of a pyarrow schema's field names, types and nullability (metadata ignored)."""
    fields = [[f.name, str(f.type), f.nullable] for f in schema]
    return digest_of(fields)[:16]


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the stage folder, '/'-separated
    size: int
    sha256: str
    rows: int | None = None


@dataclass(frozen=True)
class Manifest:
    """The commit record of one stage output."""

    stage: str
    files: tuple[FileEntry, ...]
    row_counts: Mapping[str, int] = field(default_factory=dict)
    schemas: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    cache_key: str = ""
    code_version: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """Digest of the whole manifest: what downstream cache keys depend on."""
        return digest_of(asdict(self))

    @property
    def content_digest(self) -> str:
        """Digest of the data alone (files, row counts, schemas): unchanged when a code
        change re-runs a stage that writes the same bytes. Checkpoints are tied to this,
        so such a re-run does not orphan a trained model."""
        return digest_of({"files": [asdict(f) for f in self.files],
                          "row_counts": dict(self.row_counts), "schemas": dict(self.schemas)})

    def to_json(self) -> str:
        body = asdict(self)
        body["digest"] = self.digest
        return json.dumps(body, indent=2, sort_keys=True, default=_jsonable) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        recorded = body.pop("digest", None)
        files = tuple(FileEntry(**f) for f in body.pop("files"))
        manifest = cls(files=files, **body)
        if recorded is not None and recorded != manifest.digest:
            raise ManifestMismatchError(
                f"manifest of stage {manifest.stage!r} was edited: digest {recorded[:12]} "
                f"recorded, {manifest.digest[:12]} computed"
            )
        return manifest

    def file(self, rel_path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == rel_path:
                return entry
        raise KeyError(rel_path)


def _parquet_rows(fs: AbstractFileSystem, path: str) -> int | None:
    if not path.endswith(".parquet"):
        return None
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        return int(pq.ParquetFile(fh).metadata.num_rows)


def _list_files(fs: AbstractFileSystem, root: str) -> list[str]:
    if not fs.exists(root):
        return []
    return sorted(p for p in fs.find(root) if not fs.isdir(p))


def move_tree(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Move the folder `src` to `dst` (which must not exist).

    A local disk renames the folder. An object store has no folders: a recursive `mv`
    there also tries to copy the folder pseudo-keys (e.g. `data/`) and fails with "key does
    not exist", so each file is copied by name (lists, so nothing is expanded), then the
    staging keys are deleted."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols:
        fs.mv(src, dst, recursive=True)
        return
    files = _list_files(fs, src)
    if files:
        fs.copy(files, [posixpath.join(dst, posixpath.relpath(f, src)) for f in files])
    fs.rm(src, recursive=True)


class StageWriter:
    """Write a stage's files into staging, then publish them atomically with a manifest.

    Usage::

        writer = StageWriter(stage_url, stage="ingest/text")
        write files under writer.staging_url ...
        manifest = writer.publish(row_counts={...}, inputs={...}, cache_key=key)

    If the process dies before `publish`, only a `_staging/` folder is left; readers never
    look there and the next writer of the same stage removes it.
    """

    def __init__(self, stage_url: str, stage: str,
                 options: Mapping[str, Any] | None = None) -> None:
        self.stage = stage
        self.stage_url = to_url(stage_url).rstrip("/")
        self.fs, self.final_path = filesystem(self.stage_url, options)
        parent, name = posixpath.split(self.final_path)
        staging_root = posixpath.join(parent, STAGING_DIR)
        for stale in self.fs.glob(posixpath.join(staging_root, f"{name}-*")):
            log.info("removing stale staging folder %s of an earlier attempt", stale)
            self.fs.rm(stale, recursive=True)
        self.staging_path = posixpath.join(staging_root, f"{name}-{uuid.uuid4().hex[:12]}")
        self.fs.makedirs(self.staging_path, exist_ok=True)
        protocol = self.stage_url.split("://", 1)[0]
        self.staging_url = f"{protocol}://{self.staging_path}"

    def publish(self, row_counts: Mapping[str, int] | None = None,
                schemas: Mapping[str, str] | None = None,
                inputs: Mapping[str, str] | None = None, cache_key: str = "",
                extra: Mapping[str, Any] | None = None) -> Manifest:
        """Digest the staged files, move them into place and write the manifest last."""
        entries = []
        for path in _list_files(self.fs, self.staging_path):
            rel = posixpath.relpath(path, self.staging_path)
            if posixpath.basename(rel) in (MANIFEST_NAME, "_SUCCESS") or rel.endswith(".crc"):
                self.fs.rm(path)  # Spark/Hadoop markers are replaced by our manifest
                continue
            entries.append(FileEntry(rel, int(self.fs.size(path)), file_digest(self.fs, path),
                                     _parquet_rows(self.fs, path)))
        manifest = Manifest(
            stage=self.stage, files=tuple(entries), row_counts=dict(row_counts or {}),
            schemas=dict(schemas or {}), inputs=dict(inputs or {}), cache_key=cache_key,
            code_version=code_version(), extra=dict(extra or {}),
        )
        manifest_path = posixpath.join(self.final_path, MANIFEST_NAME)
        if self.fs.exists(self.final_path):
            # Invalidate first: from here until the new manifest lands the stage reads as
            # not done, never as a mix of old and new files.
            if self.fs.exists(manifest_path):
                self.fs.rm(manifest_path)
            self.fs.rm(self.final_path, recursive=True)
        self.fs.makedirs(posixpath.dirname(self.final_path), exist_ok=True)
        move_tree(self.fs, self.staging_path, self.final_path)
        tmp = posixpath.join(self.final_path, f".{MANIFEST_NAME}.{uuid.uuid4().hex[:8]}")
        with self.fs.open(tmp, "wb") as fh:
            fh.write(manifest.to_json().encode())
        self.fs.mv(tmp, manifest_path)
        log.info("published stage %s: %d files, rows %s, digest %s", self.stage, len(entries),
                 dict(manifest.row_counts), manifest.digest[:12])
        return manifest

    def abort(self) -> None:
        """Drop the staged files (a failed attempt)."""
        if self.fs.exists(self.staging_path):
            self.fs.rm(self.staging_path, recursive=True)


def read_manifest(stage_url: str, options: Mapping[str, Any] | None = None) -> Manifest:
    """The manifest of a published stage; `MissingManifestError` when it was never published."""
    fs, path = filesystem(stage_url, options)
    manifest_path = posixpath.join(path, MANIFEST_NAME)
    try:
        with fs.open(manifest_path, "rb") as fh:
            text = fh.read().decode()
    except FileNotFoundError:
        raise MissingManifestError(
            f"{stage_url} has no {MANIFEST_NAME}: the stage did not finish publishing"
        ) from None
    return Manifest.from_json(text)


def is_published(stage_url: str, options: Mapping[str, Any] | None = None) -> bool:
    try:
        read_manifest(stage_url, options)
    except (MissingManifestError, ManifestMismatchError):
        return False
    return True


def verify_stage(stage_url: str, options: Mapping[str, Any] | None = None) -> Manifest:
    """Re-digest every listed file; raise `ManifestMismatchError` naming the first bad one."""
    manifest = read_manifest(stage_url, options)
    fs, root = filesystem(stage_url, options)
    for entry in manifest.files:
        path = posixpath.join(root, entry.path)
        if not fs.exists(path):
            raise ManifestMismatchError(f"{stage_url}: {entry.path} listed but missing")
        size = int(fs.size(path))
        if size != entry.size:
            raise ManifestMismatchError(
                f"{stage_url}: {entry.path} has {size} bytes, manifest says {entry.size}")
        actual = file_digest(fs, path)
        if actual != entry.sha256:
            raise ManifestMismatchError(
                f"{stage_url}: {entry.path} sha256 {actual[:12]} != manifest {entry.sha256[:12]}")
    return manifest


def published_files(stage_url: str, prefix: str = "", suffix: str = "",
                    options: Mapping[str, Any] | None = None) -> list[str]:
    """URLs of the files a stage's manifest lists (optionally under `prefix`), in order."""
    manifest = read_manifest(stage_url, options)
    return [join(stage_url, e.path) for e in manifest.files
            if e.path.startswith(prefix) and e.path.endswith(suffix)]


def write_bytes_atomic(url: str, data: bytes, options: Mapping[str, Any] | None = None
                       ) -> None:
    """Write `data` to a temporary name then move it over `url`, so readers never see a
    half-written file (a rename on local disks, one PUT on object stores)."""
    fs, path = filesystem(url, options)
    fs.makedirs(posixpath.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open(tmp, "wb") as fh:
        fh.write(data)
    fs.mv(tmp, path)


def write_json_atomic(url: str, obj: Any, options: Mapping[str, Any] | None = None) -> None:
    """Write JSON to a temporary name then move it over `url` (see write_bytes_atomic)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
    write_bytes_atomic(url, text.encode(), options)


def read_json(url: str, options: Mapping[str, Any] | None = None) -> Any:
    fs, path = filesystem(url, options)
    with fs.open(path, "rb") as fh:
        return json.loads(fh.read().decode())


@dataclass(frozen=True)
class RunPaths:
    """The run layout of DESIGN.md: `<root>/runs/<run_id>/...`."""

    root: str
    run_id: str

    @property
    def run_url(self) -> str:
        return join(self.root, "runs", self.run_id)

    @property
    def run_json(self) -> str:
        return join(self.run_url, "run.json")

    @property
    def checkpoints(self) -> str:
        return join(self.run_url, "checkpoints")

    @property
    def reports(self) -> str:
        return join(self.run_url, "reports")

    def stage(self, name: str) -> str:
        """Folder of a stage's output; `name` may be nested, e.g. 'ingest/text'."""
        return join(self.run_url, *name.split("/"))

