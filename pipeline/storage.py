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
import re
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


class CorruptManifestError(ManifestMismatchError):
    """A manifest that is not a manifest: invalid JSON, wrong shape, or file entries that
    point outside their stage folder. Read as "not published"."""


class OutputFolderError(ValueError):
    """A folder holds something other than an earlier output of the stage to publish
    there, so publishing (which replaces the folder) would destroy it."""


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


def _filesystem(url: str,
                options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it (use `Location`)."""
    url = to_url(url)
    opts = dict(options or {})
    if url.startswith("file://"):
        opts.setdefault("auto_mkdir", True)  # as object stores behave: no mkdir before write
    fs, path = fsspec.core.url_to_fs(url, **opts)
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL with '/', whatever the filesystem."""
    return posixpath.join(to_url(url).rstrip("/"), *parts)


@dataclass(frozen=True)
class Location:
    """A place in storage: a URL and the fsspec options that reach it, as one value.

    Every file or folder the pipeline reads or writes is a Location, so the options
    (`endpoint_url`, region, ...) of `storage.options` travel with the URL into every
    call, Spark executor and Ray worker (it pickles) instead of being threaded by hand.
    It works like datatrove's `DataFolder`: `loc / "curated"` is a child, `loc.open()`,
    `loc.read_json()`, `loc.write_json()` do the I/O. Credentials never belong in
    `options`: they come from the environment of the process that does the I/O.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        url = to_url(self.url)
        if not url.endswith(":///"):
            url = url.rstrip("/")
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "options", dict(self.options or {}))

    def __hash__(self) -> int:
        return hash((self.url, canonical_json(self.options)))

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, rel: str) -> Location:
        return self.join(*rel.split("/"))

    def join(self, *parts: str) -> Location:
        """The location `parts` below this one (a nested name like 'ingest/text' works)."""
        return Location(join(self.url, *[p for part in parts for p in part.split("/") if p]),
                        self.options)

    def at(self, url: str) -> Location:
        """Another URL on the same store (same options), e.g. one a manifest recorded."""
        return Location(url, self.options)

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.rstrip("/"))

    @property
    def parent(self) -> Location:
        return Location(posixpath.dirname(self.url.rstrip("/")), self.options)

    def filesystem(self) -> tuple[AbstractFileSystem, str]:
        """The fsspec filesystem and the path inside it."""
        return _filesystem(self.url, self.options)

    @property
    def fs(self) -> AbstractFileSystem:
        return self.filesystem()[0]

    @property
    def path(self) -> str:
        return self.filesystem()[1]

    def arrow_filesystem(self) -> tuple[Any, str]:
        """A pyarrow filesystem and path (local disks natively; others through fsspec)."""
        import pyarrow.fs as pafs

        if self.is_local:
            return pafs.LocalFileSystem(), self.url[len("file://"):]
        fs, path = self.filesystem()
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path

    def url_of(self, path: str) -> str:
        """The URL of a path inside this location's filesystem (as `fs.find` gives it)."""
        return f"file://{path}" if self.is_local else f"{self.protocol}://{path}"

    def exists(self) -> bool:
        fs, path = self.filesystem()
        return bool(fs.exists(path))

    def is_file(self) -> bool:
        fs, path = self.filesystem()
        return bool(fs.isfile(path))

    def size(self) -> int:
        fs, path = self.filesystem()
        return int(fs.size(path))

    def open(self, mode: str = "rb") -> Any:
        """A file object (binary modes; the parent folder is created for writes)."""
        fs, path = self.filesystem()
        return fs.open(path, mode)

    def read_bytes(self) -> bytes:
        with self.open("rb") as fh:
            return bytes(fh.read())

    def read_json(self) -> Any:
        """The JSON document at this location; FileNotFoundError when there is none."""
        return json.loads(self.read_bytes().decode())

    def write_bytes(self, data: bytes) -> None:
        """Write `data` to a temporary name then move it here, so readers never see a
        half-written file (a rename on local disks, one PUT on object stores)."""
        fs, path = self.filesystem()
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
        fs.mv(tmp, path)

    def write_json(self, obj: Any) -> None:
        """Write `obj` as indented, key-sorted JSON, atomically (see `write_bytes`)."""
        text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"
        self.write_bytes(text.encode())

    def files(self) -> list[Location]:
        """Every file at or below this location, sorted (empty when there is none)."""
        fs, root = self.filesystem()
        if not fs.exists(root):
            return []
        if fs.isfile(root):
            return [self]
        return [Location(self.url_of(p), self.options) for p in _list_files(fs, root)]

    def remove(self) -> None:
        """Delete this file or folder (recursively); nothing happens when it is absent."""
        fs, path = self.filesystem()
        if fs.exists(path):
            fs.rm(path, recursive=True)


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


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def entry_path_problem(rel: Any) -> str | None:
    """Why `rel` cannot be a manifest entry (None when it can): an entry must be a
    relative '/'-separated path that stays inside its stage folder, so no absolute path,
    no '..' or '.' or empty part, no URL scheme (`s3:`, `file:`) and no backslash."""
    if not isinstance(rel, str) or not rel:
        return "not a non-empty string"
    if "\\" in rel or "\x00" in rel:
        return "contains a backslash or NUL"
    if rel.startswith("/"):
        return "is absolute"
    if _SCHEME.match(rel):
        return "starts with a URL scheme"
    if any(part in ("", ".", "..") for part in rel.split("/")):
        return "has an empty, '.' or '..' part"
    return None


def _check_entry(stage_name: str, rel: Any) -> None:
    problem = entry_path_problem(rel)
    if problem is not None:
        raise CorruptManifestError(f"manifest of stage {stage_name!r} lists {rel!r}, which "
                                   f"{problem}: entries must stay inside the stage folder")


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
        """Parse a manifest; `CorruptManifestError` when it is not valid JSON of the right
        shape or lists a path outside its folder, `ManifestMismatchError` when edited."""
        try:
            body = json.loads(text)
            recorded = body.pop("digest", None)
            files = tuple(FileEntry(**f) for f in body.pop("files"))
            manifest = cls(files=files, **body)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CorruptManifestError(f"not a valid manifest: {type(exc).__name__}: "
                                       f"{exc}") from None
        for entry in manifest.files:
            _check_entry(manifest.stage, entry.path)
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


def _is_own_temp(rel: str) -> bool:
    """A temporary manifest name `publish` writes before its rename (left by a crash)."""
    return posixpath.basename(rel).startswith(f".{MANIFEST_NAME}.")


def check_replaceable(target: Location, stage: str) -> None:
    """Refuse, with `OutputFolderError`, to publish `stage` at `target` unless the folder
    is absent, empty, or holds exactly an earlier published output of the same stage: its
    manifest names `stage` and lists every file in it. A folder a user chose (`pipeline
    predict --output`) may hold anything; publishing replaces the whole folder, so
    anything not provably ours must survive (as Spark's `ErrorIfExists` save mode)."""
    fs, path = target.filesystem()
    if not fs.exists(path):
        return
    if fs.isfile(path):
        raise OutputFolderError(f"{target.url} is a file, not a folder: refusing to "
                                f"replace it with the output of {stage}")
    rels = [posixpath.relpath(p, path) for p in _list_files(fs, path)]
    rels = [r for r in rels if not _is_own_temp(r)]
    if not rels:
        return
    advice = "choose a new or empty folder, or remove it yourself"
    try:
        manifest = read_manifest(target)
    except MissingManifestError:
        shown = ", ".join(rels[:3]) + (f" and {len(rels) - 3} more" if len(rels) > 3 else "")
        raise OutputFolderError(
            f"{target.url} holds {len(rels)} file(s) ({shown}) and no {MANIFEST_NAME}: it "
            f"is not an output of {stage}, refusing to replace it; {advice}") from None
    except ManifestMismatchError as exc:
        raise OutputFolderError(f"{target.url}: its {MANIFEST_NAME} cannot be trusted "
                                f"({exc}), refusing to replace it; {advice}") from None
    if manifest.stage != stage:
        raise OutputFolderError(
            f"{target.url} holds the output of {manifest.stage}, not of {stage}: refusing "
            f"to replace it; {advice}")
    listed = {MANIFEST_NAME, *(e.path for e in manifest.files)}
    foreign = [r for r in rels if r not in listed]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                          if len(foreign) > 3 else "")
        raise OutputFolderError(
            f"{target.url} holds an output of {stage} plus {len(foreign)} file(s) its "
            f"manifest does not list ({shown}): refusing to replace it; {advice}")


def overlapping(a: Location, b: Location) -> bool:
    """Whether `a` and `b` are the same place or one lies inside the other."""
    if a.protocol != b.protocol:
        return False
    x, y = a.url.rstrip("/"), b.url.rstrip("/")
    return x == y or x.startswith(y + "/") or y.startswith(x + "/")


class StageWriter:
    """Write a stage's files into staging, then publish them atomically with a manifest.

    Usage::

        writer = StageWriter(run.stage("ingest/text"), stage="ingest/text")
        write files under writer.staging ...
        manifest = writer.publish(row_counts={...}, inputs={...}, cache_key=key)

    If the process dies before `publish`, only a `_staging/` folder is left; readers never
    look there and the next writer of the same stage removes it.

    `guard_existing`: the target is a folder a user named rather than one inside the run,
    so it is replaced only when `check_replaceable` allows it (checked here, before any
    work, and again just before `publish` replaces it).
    """

    def __init__(self, target: Location, stage: str, guard_existing: bool = False) -> None:
        self.stage = stage
        self.target = target
        self.guard_existing = guard_existing
        if guard_existing:
            check_replaceable(target, stage)
        self.fs, self.final_path = target.filesystem()
        parent, name = posixpath.split(self.final_path)
        staging_root = posixpath.join(parent, STAGING_DIR)
        for stale in self.fs.glob(posixpath.join(staging_root, f"{name}-*")):
            log.info("removing stale staging folder %s of an earlier attempt", stale)
            self.fs.rm(stale, recursive=True)
        self.staging_path = posixpath.join(staging_root, f"{name}-{uuid.uuid4().hex[:12]}")
        self.fs.makedirs(self.staging_path, exist_ok=True)
        #: where the stage writes its files before `publish`
        self.staging = target.at(target.url_of(self.staging_path))

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
        if self.guard_existing:
            check_replaceable(self.target, self.stage)
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


def read_manifest(stage: Location) -> Manifest:
    """The manifest of a published stage; `MissingManifestError` when it was never
    published, `ManifestMismatchError` (logged as a warning) when it is corrupt or edited:
    callers such as `plan` read either as "not published"."""
    try:
        data = (stage / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise MissingManifestError(
            f"{stage.url} has no {MANIFEST_NAME}: the stage did not finish publishing"
        ) from None
    try:
        return Manifest.from_json(data.decode())
    except UnicodeDecodeError as exc:
        log.warning("%s/%s is not a manifest (%s): read as not published", stage.url,
                    MANIFEST_NAME, exc)
        raise CorruptManifestError(f"{stage.url}/{MANIFEST_NAME}: not UTF-8 text") from None
    except ManifestMismatchError as exc:
        log.warning("%s/%s cannot be trusted (%s): read as not published", stage.url,
                    MANIFEST_NAME, exc)
        raise type(exc)(f"{stage.url}: {exc}") from None


def _entry_location(stage: Location, manifest: Manifest, rel: str) -> Location:
    """The file `rel` of `stage`, refused unless it lies inside the stage folder (a
    Manifest built in code skips `from_json`'s check)."""
    _check_entry(manifest.stage, rel)
    return stage / rel


def is_published(stage: Location) -> bool:
    try:
        read_manifest(stage)
    except (MissingManifestError, ManifestMismatchError):
        return False
    return True


def verify_stage(stage: Location) -> Manifest:
    """Re-digest every listed file; raise `ManifestMismatchError` naming the first bad one."""
    manifest = read_manifest(stage)
    fs, root = stage.filesystem()
    for entry in manifest.files:
        _check_entry(manifest.stage, entry.path)
        path = posixpath.join(root, entry.path)
        if not fs.exists(path):
            raise ManifestMismatchError(f"{stage.url}: {entry.path} listed but missing")
        size = int(fs.size(path))
        if size != entry.size:
            raise ManifestMismatchError(
                f"{stage.url}: {entry.path} has {size} bytes, manifest says {entry.size}")
        actual = file_digest(fs, path)
        if actual != entry.sha256:
            raise ManifestMismatchError(
                f"{stage.url}: {entry.path} sha256 {actual[:12]} != manifest {entry.sha256[:12]}")
    return manifest


def published_files(stage: Location, prefix: str = "", suffix: str = "") -> list[Location]:
    """The files a stage's manifest lists (optionally under `prefix`), in order."""
    manifest = read_manifest(stage)
    return [_entry_location(stage, manifest, e.path) for e in manifest.files
            if e.path.startswith(prefix) and e.path.endswith(suffix)]


_RUN_ID = re.compile(r"[A-Za-z0-9._-]+")


def run_id_problem(run_id: Any) -> str | None:
    """Why `run_id` cannot name a run (None when it can): a run id is one folder name
    under `<root>/runs/`, so only letters, digits, '.', '_' and '-', and not '.' or '..'
    (a '/' or '..' would put the run, and the folders publish replaces, elsewhere)."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        return (f"{run_id!r} is not a valid run id: use letters, digits, '.', '_' and '-' "
                "only (not '.' or '..')")
    return None


@dataclass(frozen=True)
class RunPaths:
    """The run layout: `<root>/runs/<run_id>/...`, each place a `Location`; ValueError
    for a run id that would leave `<root>/runs/` (`run_id_problem`)."""

    root: Location
    run_id: str

    def __post_init__(self) -> None:
        problem = run_id_problem(self.run_id)
        if problem is not None:
            raise ValueError(problem)

    @property
    def run(self) -> Location:
        """The run's folder."""
        return self.root.join("runs", self.run_id)

    @property
    def run_url(self) -> str:
        return self.run.url

    @property
    def run_json(self) -> Location:
        return self.run / "run.json"

    @property
    def checkpoints(self) -> Location:
        return self.run / "checkpoints"

    @property
    def reports(self) -> Location:
        return self.run / "reports"

    def stage(self, name: str) -> Location:
        """Folder of a stage's output; `name` may be nested, e.g. 'ingest/text'."""
        return self.run / name
