"""Which raw files an ingest stage reads: every file found is read, rejected or excluded.

`inputs.<modality>.paths` entries are files, folders (searched recursively, symlinked
folders followed once) or glob patterns. A path is taken literally when it exists, so a
file or folder named `a[1].jsonl` is just that; only a path that does not exist and holds
`*`, `?` or `[` is expanded as a glob. Names found by listing are never glob-expanded
again: they are opened as the exact paths the listing returned (`pipeline.spark_io`).

Each file found below a configured path gets exactly one fate, checked in this order:

- excluded `hidden`: a name (or a folder on its way) starting with '.';
- excluded `underscore`: a name (or folder) starting with '_' (`_SUCCESS`,
  `_MANIFEST.json`, `_staging/`), the marker convention of Spark, Hadoop and this pipeline;
- excluded `exclude:<pattern>`: it matches one of `inputs.<modality>.exclude`;
- excluded `not_included`: `include` patterns are set and it matches none of them;
- read: its extension (after an optional `.gz`/`.bz2`/`.zst`) is one the modality reads;
- rejected: anything else; the stage quarantines it as UNSUPPORTED_FILE.

An `include` pattern that matches a hidden or '_'-prefixed file includes it. Patterns
without '/' match the file name; patterns with '/' match the path below the configured
path (`fnmatch`, case-sensitive; `*` crosses '/'). A configured path that does not exist (or
a glob that matches nothing) is a configuration error, raised before any Spark work.

Nothing here imports Spark: the stage's planning lists inputs for its cache key.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from fsspec import AbstractFileSystem

from pipeline.storage import Location

#: compression suffixes read transparently, and the codec (pyarrow's name) of each
COMPRESSION: dict[str, str] = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}
_GLOB_CHARS = ("*", "?", "[")

HIDDEN, UNDERSCORE, NOT_INCLUDED = "hidden", "underscore", "not_included"


def compression_of(name: str) -> str | None:
    """The codec of a compressed file name (`a.jsonl.gz` -> 'gzip'), else None."""
    lower = name.lower()
    for suffix, codec in COMPRESSION.items():
        if lower.endswith(suffix):
            return codec
    return None


def base_name(name: str) -> str:
    """`name` without its compression suffix, lower-case (`A.JSONL.GZ` -> `a.jsonl`)."""
    lower = name.lower()
    for suffix in COMPRESSION:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def has_extension(name: str, extensions: Sequence[str]) -> bool:
    """Whether `name` (compression suffix aside) ends with one of `extensions`."""
    return base_name(name).endswith(tuple(e.lower() for e in extensions))


@dataclass
class FileScan:
    """What a listing of the configured inputs found (each file once, sorted by URL)."""

    files: list[Location] = field(default_factory=list)  # to read
    unsupported: list[Location] = field(default_factory=list)  # UNSUPPORTED_FILE
    excluded: dict[str, list[str]] = field(default_factory=dict)  # rule -> file URLs

    def figures(self) -> dict[str, int]:
        """Counts for the stage's manifest: files read, rejected and excluded per rule."""
        out = {"files.read": len(self.files), "files.rejected": len(self.unsupported),
               "files.excluded": sum(len(v) for v in self.excluded.values())}
        out.update({f"files.excluded.{rule}": len(urls)
                    for rule, urls in sorted(self.excluded.items())})
        return out


class InputPathError(ValueError):
    """A configured input path that does not exist, or a glob that matches nothing."""


def expand_path(loc: Location) -> list[Location]:
    """A configured path as the Locations it names: itself when it exists (files and
    folders are literal, whatever characters their names hold), else the matches of the
    glob it spells, sorted; InputPathError when neither gives anything."""
    fs, path = loc.filesystem()
    if fs.exists(path):
        return [loc]
    if any(c in path for c in _GLOB_CHARS):
        matches = sorted(fs.glob(path))
        if matches:
            return [loc.at(loc.url_of(m)) for m in matches]
        raise InputPathError(f"{loc.url}: the pattern matches no file or folder")
    raise InputPathError(f"{loc.url}: no such file or folder")


def walk_files(fs: AbstractFileSystem, root: str) -> Iterator[str]:
    """Every file below `root`, following symlinked folders (each real folder once: a
    link back up the tree is not a loop)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        seen: set[str] = set()
        for folder, dirs, names in os.walk(root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(folder, name)
                if os.path.isfile(full):  # a broken link or a socket is not a file
                    yield full
        return
    yield from sorted(fs.find(root, withdirs=False))


def _matches(pattern: str, rel: str) -> bool:
    target = rel if "/" in pattern else posixpath.basename(rel)
    return fnmatch.fnmatchcase(target, pattern)


def _rule(rel: str, include: Sequence[str], exclude: Sequence[str]) -> str | None:
    """The exclusion rule `rel` (path below its configured path) falls under, or None."""
    included = any(_matches(p, rel) for p in include)
    parts = rel.split("/")
    if not included:
        if any(p.startswith(".") for p in parts):
            return HIDDEN
        if any(p.startswith("_") for p in parts):
            return UNDERSCORE
    for pattern in exclude:
        if _matches(pattern, rel):
            return f"exclude:{pattern}"
    if include and not included:
        return NOT_INCLUDED
    return None


def scan_inputs(inputs: Sequence[Location], extensions: Sequence[str],
                include: Sequence[str] = (), exclude: Sequence[str] = (),
                compressed: Sequence[str] | None = None) -> FileScan:
    """Every file under `inputs` (files, folders, globs: `expand_path`) sorted by URL into
    read / unsupported / excluded; see the module docstring for the rules.

    A file is read when its name ends with one of `extensions`, or with one of
    `compressed` (default: `extensions`) followed by a compression suffix. Empty
    `extensions` reads every file that is not excluded. A file reached from two configured
    paths is listed once."""
    exts = tuple(e.lower() for e in extensions)
    packed = exts if compressed is None else tuple(e.lower() for e in compressed)
    scan = FileScan()
    fates: dict[str, tuple[str, Location]] = {}
    for configured in inputs:
        for root in expand_path(configured):
            fs, path = root.filesystem()
            if fs.isfile(path):
                candidates = [(path, posixpath.basename(path))]
            else:
                prefix = path.rstrip("/") + "/"
                candidates = [(p, p[len(prefix):] if p.startswith(prefix) else
                               posixpath.basename(p)) for p in walk_files(fs, path)]
            for candidate, rel in candidates:
                url = root.url_of(candidate)
                if url in fates:
                    continue
                name = posixpath.basename(rel).lower()
                rule = _rule(rel, include, exclude)
                if rule is not None:
                    fate = "x:" + rule
                elif (not exts or name.endswith(exts)
                      or (compression_of(name) and base_name(name).endswith(packed))):
                    fate = "read"
                else:
                    fate = "unsupported"
                fates[url] = (fate, root.at(url))
    for url in sorted(fates):
        fate, loc = fates[url]
        if fate == "read":
            scan.files.append(loc)
        elif fate == "unsupported":
            scan.unsupported.append(loc)
        else:
            scan.excluded.setdefault(fate[2:], []).append(url)
    return scan
