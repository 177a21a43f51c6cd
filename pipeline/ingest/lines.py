"""Reading raw files into Spark with exact lineage: file URL and 1-based line number.

Spark's text and JSON readers decode bytes leniently (invalid UTF-8 becomes U+FFFD) and
forget line numbers. Lineage and strict UTF-8 both need the bytes, so each file is read
whole (`pipeline.spark_io.read_files`, through its fsspec Location in the executors) and
split into lines inside Arrow batches: newline positions are found with numpy over the
whole file, and strict decoding is one C call per file, falling back to per-line decoding
only for the rare file that fails.

Files are read whole, so one raw file must fit in an executor's memory (and in 2 GiB).
Shard bigger inputs; the common JSONL/CSV writers do.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.spark_io import read_files
from pipeline.storage import Location

LINES_SCHEMA = "path string, line long, text string, raw binary"
_ARROW_LINES = pa.schema([("path", pa.string()), ("line", pa.int64()), ("text", pa.string()),
                          ("raw", pa.binary())])
# What `read_lines` and `count_nonblank_lines` treat as blank: ASCII whitespace only.
BLANK_BYTES = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20)


def list_input_files(inputs: Sequence[Location], extensions: Sequence[str]) -> list[Location]:
    """Every file under `inputs` (files or folders, searched recursively) whose name ends
    with one of `extensions` (case-insensitive), sorted by URL, each on its input's store
    (same options). Hidden files, names starting with '_' (markers, manifests) and staging
    folders are skipped."""
    exts = tuple(e.lower() for e in extensions)
    found: dict[str, Location] = {}
    for root in inputs:
        fs, path = root.filesystem()
        candidates = [path] if fs.isfile(path) else fs.find(path)
        for candidate in candidates:
            name = posixpath.basename(candidate)
            if name.startswith((".", "_")) or not name.lower().endswith(exts):
                continue
            if "/_staging/" in candidate:
                continue
            url = root.url_of(candidate)
            found.setdefault(url, root.at(url))
    return [found[url] for url in sorted(found)]


def count_nonblank_lines(spark: SparkSession, files: Sequence[Location]) -> int:
    """Non-blank lines of `files` (a newline ends a line; blank = only ASCII whitespace),
    counted in the JVM with Spark's split and regex over the files' bytes: independent of
    `read_lines`' numpy splitting, so a record lost or doubled by the parse shows."""
    if not files:
        return 0
    lines = F.split(F.col("content").cast("string"), "\\n", -1)
    nonblank = F.filter(lines, lambda line: line.rlike("[^\\t\\n\\x0B\\f\\r ]"))
    row = read_files(spark, files).agg(F.sum(F.size(nonblank)).alias("n")).first()
    return int((row["n"] if row is not None else 0) or 0)


def input_roots(inputs: Sequence[Location]) -> list[str]:
    """The input URLs in the spelling `list_input_files` uses for the files under them."""
    return [loc.url_of(loc.path) for loc in inputs]


def relative_key(uri: Column, roots: Sequence[str]) -> Column:
    """Spark expression: `<i>/<path of uri relative to roots[i]>` for the first root holding
    the file URI `uri` (a root that is itself a file gives its base name).

    Ids hashed from this key do not change when the input folder moves; the root's position
    keeps two roots that both hold `part-000.jsonl` apart."""
    key: Column = F.lit(None).cast("string")
    for i, root in reversed(list(enumerate(roots))):
        prefix = root if root.endswith("/") else root + "/"
        key = (F.when(uri == F.lit(root), F.lit(f"{i}/{posixpath.basename(root)}"))
               .when(uri.startswith(prefix),
                     F.concat(F.lit(f"{i}/"), F.substring(uri, len(prefix) + 1, 1 << 30)))
               .otherwise(key))
    return key


def stable_id(*parts: Column) -> Column:
    """Spark expression: the first 16 hex digits of SHA-256 over `parts` joined by ':'."""
    return F.substring(F.sha2(F.concat_ws(":", *[p.cast("string") for p in parts]), 256),
                       1, 16)


_WHITESPACE = np.array(BLANK_BYTES, dtype=np.uint8)


def _split_lines(path: str, content: bytes) -> pa.RecordBatch:
    buf = np.frombuffer(content, dtype=np.uint8)
    n = len(buf)
    ends = np.flatnonzero(buf == 0x0A)
    starts = np.concatenate(([0], ends + 1)).astype(np.int64)
    stops = np.concatenate((ends, [n])).astype(np.int64)
    # Strip a trailing '\r' (CRLF files) without touching interior bytes.
    has_cr = (stops > starts) & (buf[np.clip(stops - 1, 0, max(n - 1, 0))] == 0x0D) if n else (
        np.zeros(len(stops), dtype=bool))
    stops = stops - has_cr
    line_no = np.arange(1, len(starts) + 1, dtype=np.int64)
    # Blank lines (empty or whitespace-only) are layout, not records: count the
    # non-whitespace bytes of every line at once with a prefix sum.
    non_ws = np.concatenate(([0], np.cumsum(~np.isin(buf, _WHITESPACE), dtype=np.int64)))
    keep = (non_ws[stops] - non_ws[starts]) > 0
    starts, stops, line_no = starts[keep], stops[keep], line_no[keep]
    # Gather the kept lines' bytes into one Arrow data buffer with a byte mask built from
    # a difference array: no Python loop over lines.
    delta = np.zeros(n + 1, dtype=np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, stops, -1)
    data = buf[np.cumsum(delta[:n]) > 0] if n else buf
    offsets = np.concatenate(([0], np.cumsum(stops - starts))).astype(np.int32)
    raw = pa.Array.from_buffers(pa.binary(), len(starts),
                                [None, pa.py_buffer(offsets), pa.py_buffer(data.tobytes())])
    try:
        text = raw.cast(pa.string())  # validates UTF-8 for the whole file at once
    except pa.ArrowInvalid:
        decoded: list[str | None] = []
        for piece in raw.to_pylist():
            try:
                decoded.append(piece.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
        text = pa.array(decoded, type=pa.string())
    paths = pa.array([path] * len(starts), type=pa.string())
    return pa.RecordBatch.from_arrays([paths, pa.array(line_no), text, raw],
                                      schema=_ARROW_LINES)


def _lines_of_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        paths = batch.column("path").to_pylist()
        contents = batch.column("content").to_pylist()
        for path, content in zip(paths, contents, strict=True):
            yield _split_lines(path, content or b"")


def read_lines(spark: SparkSession, files: Sequence[Location]) -> DataFrame:
    """One row per non-blank line of `files`: path (the file's URL), line (1-based), text
    (None when the line is not valid UTF-8) and raw (the line's bytes without its line
    ending)."""
    return read_files(spark, files).select("path", "content").mapInArrow(
        _lines_of_batches, LINES_SCHEMA)


def whole_text_files(spark: SparkSession, files: Sequence[Location]) -> DataFrame:
    """One row per file: path, line (null), text (None when not valid UTF-8), raw bytes.

    For formats where a file is one record (plain .txt documents)."""
    df = read_files(spark, files)
    return df.select(
        "path",
        F.lit(None).cast("long").alias("line"),
        # Strict decoding is done by `decode_strict_utf8` in Arrow; keep Spark's hands off.
        F.col("content").alias("raw"),
    ).mapInArrow(_decode_whole, LINES_SCHEMA)


def _decode_whole(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        raw = batch.column("raw")
        try:
            text = raw.cast(pa.string())
        except pa.ArrowInvalid:
            values: list[str | None] = []
            for item in raw.to_pylist():
                try:
                    values.append(None if item is None else item.decode("utf-8"))
                except UnicodeDecodeError:
                    values.append(None)
            text = pa.array(values, type=pa.string())
        yield pa.RecordBatch.from_arrays(
            [batch.column("path"), batch.column("line"), text, raw], schema=_ARROW_LINES)
