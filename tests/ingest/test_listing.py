"""pipeline.ingest.listing: every file found under a configured path is read, rejected or
excluded by a named rule; literal names, globs only where written, symlinked folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import ConfigError, config_from_dict
from pipeline.ingest.listing import (
    InputPathError,
    base_name,
    compression_of,
    expand_path,
    scan_inputs,
)
from pipeline.ingest.stage import configured_inputs
from pipeline.storage import Location

pytestmark = pytest.mark.unit

TEXT = (".jsonl", ".ndjson", ".json", ".txt")


def _touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"{}\n")


def _names(locs: list[Location], root: Path) -> list[str]:
    prefix = f"file://{root.resolve()}/"
    return [loc.url[len(prefix):] for loc in locs]


def test_every_file_has_one_fate(tmp_path: Path) -> None:
    _touch(tmp_path, "a[1].jsonl", "a1.jsonl", "b{x}.ndjson", "c?.txt", "d*.json",
           "e.jsonl.gz", "f.txt.zst", "g.png", "h.jsonl.gz.bak", ".hidden.jsonl",
           ".git/config", "_SUCCESS", "sub/_staging/x.jsonl", "sub/deep/k.JSONL",
           "skip/me.jsonl", "notes.md")
    scan = scan_inputs([Location(str(tmp_path))], TEXT, exclude=("skip/*", "*.md"))
    assert _names(scan.files, tmp_path) == [
        "a1.jsonl", "a[1].jsonl", "b{x}.ndjson", "c?.txt", "d*.json", "e.jsonl.gz",
        "f.txt.zst", "sub/deep/k.JSONL"]
    assert _names(scan.unsupported, tmp_path) == ["g.png", "h.jsonl.gz.bak"]
    assert {rule: len(urls) for rule, urls in scan.excluded.items()} == {
        "hidden": 2, "underscore": 2, "exclude:skip/*": 1, "exclude:*.md": 1}
    assert scan.figures() == {
        "files.read": 8, "files.rejected": 2, "files.excluded": 6,
        "files.excluded.exclude:*.md": 1, "files.excluded.exclude:skip/*": 1,
        "files.excluded.hidden": 2, "files.excluded.underscore": 2}
    total = len(scan.files) + len(scan.unsupported) + scan.figures()["files.excluded"]
    assert total == sum(1 for p in tmp_path.rglob("*") if p.is_file())


def test_include_patterns_select_and_can_reach_hidden_files(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jsonl", "b.txt", "_part/c.jsonl")
    scan = scan_inputs([Location(str(tmp_path))], TEXT, include=("*.jsonl",))
    assert _names(scan.files, tmp_path) == ["_part/c.jsonl", "a.jsonl"]
    assert {k: len(v) for k, v in scan.excluded.items()} == {"not_included": 1}


def test_compression_only_for_the_formats_that_allow_it(tmp_path: Path) -> None:
    _touch(tmp_path, "a.csv.gz", "b.parquet.gz", "c.parquet")
    scan = scan_inputs([Location(str(tmp_path))], (".csv", ".parquet"), compressed=(".csv",))
    assert _names(scan.files, tmp_path) == ["a.csv.gz", "c.parquet"]
    assert _names(scan.unsupported, tmp_path) == ["b.parquet.gz"]
    assert compression_of("X.JSONL.GZ") == "gzip" and compression_of("x.jsonl") is None
    assert base_name("A.Csv.Zst") == "a.csv"


def test_symlinked_folders_are_followed_once(tmp_path: Path) -> None:
    _touch(tmp_path, "real/x.jsonl")
    (tmp_path / "in").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "in" / "link")
    os.symlink(tmp_path / "in", tmp_path / "in" / "loop")  # a cycle is not a hang
    scan = scan_inputs([Location(str(tmp_path / "in"))], TEXT)
    assert _names(scan.files, tmp_path / "in") == ["link/x.jsonl"]


def test_literal_names_win_globs_expand_and_missing_paths_fail(tmp_path: Path) -> None:
    _touch(tmp_path, "a[1].jsonl", "a1.jsonl", "p/x.jsonl", "q/y.jsonl")
    literal = expand_path(Location(str(tmp_path / "a[1].jsonl")))
    assert [loc.name for loc in literal] == ["a[1].jsonl"]
    assert [loc.name for loc in expand_path(Location(str(tmp_path / "[pq]")))] == ["p", "q"]
    with pytest.raises(InputPathError, match="no such file"):
        expand_path(Location(str(tmp_path / "absent")))
    with pytest.raises(InputPathError, match="matches no file"):
        expand_path(Location(str(tmp_path / "z*")))
    # Listing the folder: each name once, read literally (never re-expanded).
    scan = scan_inputs([Location(str(tmp_path))], TEXT)
    assert _names(scan.files, tmp_path) == ["a1.jsonl", "a[1].jsonl", "p/x.jsonl",
                                            "q/y.jsonl"]


def test_a_missing_configured_path_is_a_config_error(tmp_path: Path) -> None:
    cfg = config_from_dict({"storage": {"root": f"file://{tmp_path}/out"},
                            "inputs": {"text": {"paths": [str(tmp_path / "nope"),
                                                          str(tmp_path / "*.zzz")]}}})
    with pytest.raises(ConfigError) as err:
        configured_inputs(cfg, "text")
    assert "inputs.text.paths" in str(err.value) and "nope" in str(err.value)
    assert "*.zzz" in str(err.value)


def test_object_store_listing_has_the_same_rules() -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for path in ("/listing-t/a.jsonl", "/listing-t/.h/b.jsonl", "/listing-t/c.bin",
                 "/listing-t/d/_SUCCESS", "/listing-t/d/e[1].json"):
        fs.pipe(path, b"{}\n")
    try:
        scan = scan_inputs([Location("memory:///listing-t")], TEXT)
        assert [f.url for f in scan.files] == ["memory:///listing-t/a.jsonl",
                                                "memory:///listing-t/d/e[1].json"]
        assert [f.url for f in scan.unsupported] == ["memory:///listing-t/c.bin"]
        assert {k: len(v) for k, v in scan.excluded.items()} == {"hidden": 1, "underscore": 1}
    finally:
        fs.rm("/listing-t", recursive=True)
