"""Reading raw text files into Spark with exact lineage: file URL and 1-based line number.

Spark's text and JSON readers decode bytes leniently (invalid UTF-8 becomes U+FFFD), forget
line numbers and expand glob characters in file names. Lineage and strict decoding both
need the bytes, so each file is opened in the executors through its fsspec Location
(`pipeline.spark_io.map_files`), exactly by the path the listing found, and streamed:

- decompressed on the fly by its suffix (`.gz`, `.bz2`, `.zst`, pyarrow's codecs);
- decoded from its encoding (`utf-8` by default, any Python codec, or `auto`: detected
  per file with charset-normalizer on its first `DETECT_BYTES`) into UTF-8. Bytes that do
  not decode become invalid UTF-8 in the stream, so the line holding them has no text;
- read in pieces of `CHUNK_BYTES` and split into lines with numpy within each piece (a
  line cut by a piece boundary is carried into the next piece).

Peak memory per task is a small multiple of one piece (about 7x `CHUNK_BYTES`, measured
6.5x, plus the longest line), not of the file: executors of 2 GiB ingest a 1 GB JSONL file
(docs/inputs.md). A file that cannot be read to its end (a truncated .gz) gives the lines
read before the error and then one row with `error` set.

`count_nonblank_lines` counts the same lines with a different algorithm over the same
byte stream (non-blank segments found from byte classes, no line splitting), so a record
lost or doubled by the splitter shows in the stage's reconciliation.
"""

from __future__ import annotations

import codecs
import io
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.ingest.listing import compression_of, scan_inputs
from pipeline.spark_io import map_files
from pipeline.storage import Location

LINES_SCHEMA = ("path string, line long, text string, raw binary, encoding string, "
                "error string")
_ARROW_LINES = pa.schema([("path", pa.string()), ("line", pa.int64()), ("text", pa.string()),
                          ("raw", pa.binary()), ("encoding", pa.string()),
                          ("error", pa.string())])
# What `read_lines` and `count_nonblank_lines` treat as blank: ASCII whitespace only.
BLANK_BYTES = (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20)
CHUNK_BYTES = 4 * 1024 * 1024
DETECT_BYTES = 256 * 1024
_STEP_BYTES = 16 * 1024  # decompression reads: what came before a break is kept
AUTO = "auto"
# Stands for bytes that do not decode: a lone surrogate, which strict UTF-8 rejects.
_UNDECODABLE = "pipeline-undecodable"


def _blank(buf: np.ndarray) -> np.ndarray:
    """Which bytes are ASCII whitespace (\t \n \v \f \r and space), one bool per byte.
    Comparisons, not a table lookup: indexing by a uint8 array makes an 8-byte-per-byte
    index array first."""
    out = (buf >= 0x09) & (buf <= 0x0D)
    out |= buf == 0x20
    return out


def _mark_undecodable(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return "\udcff", exc.end


try:
    codecs.lookup_error(_UNDECODABLE)
except LookupError:
    codecs.register_error(_UNDECODABLE, _mark_undecodable)


def codec_name(encoding: str) -> str:
    """The canonical Python codec name of `encoding` ('UTF8' -> 'utf-8'); 'auto' stays;
    LookupError for an unknown codec."""
    if encoding.strip().lower() == AUTO:
        return AUTO
    return codecs.lookup(encoding).name


def list_input_files(inputs: Sequence[Location], extensions: Sequence[str],
                     include: Sequence[str] = (), exclude: Sequence[str] = (),
                     compressed: Sequence[str] = ()) -> list[Location]:
    """The files `pipeline.ingest.listing.scan_inputs` reads under `inputs`: names ending
    with one of `extensions`, or one of `compressed` plus .gz/.bz2/.zst (case-insensitive),
    sorted by URL; hidden and '_'-prefixed names and `exclude` matches are left out."""
    return scan_inputs(inputs, extensions, include, exclude, compressed).files


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


# ---------------------------------------------------------------------------------------
# The byte stream of one file: decompressed, decoded, as UTF-8 pieces.


class open_input:  # used like open()
    """`with open_input(loc) as fh`: the file's bytes, decompressed by its suffix (a binary
    file object: read(n), readline(), iteration by lines)."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self._handles: list[Any] = []

    def __enter__(self) -> Any:
        fh = self.loc.open("rb")
        self._handles.append(fh)
        codec = compression_of(self.loc.name)
        if codec is None:
            return fh
        stream = pa.input_stream(fh, compression=codec)
        self._handles.append(stream)
        # A Python buffered reader on top: line iteration and readline() work as on a file.
        buffered = io.BufferedReader(stream, buffer_size=_STEP_BYTES)
        self._handles.append(buffered)
        return buffered

    def __exit__(self, *exc: object) -> None:
        for handle in reversed(self._handles):
            handle.close()


# Single-byte code pages decode any bytes, and on short Western text charset-normalizer
# scores several alike (mac_latin2 or cp1250 for French cp1252): a candidate nearly as
# plausible as the best one (chaos within this margin) wins when it is more common.
_COMMON = ("utf-8", "cp1252", "utf-16", "iso8859-15", "latin-1")
_NEAR = 0.2


def detect_encoding(sample: bytes) -> str:
    """The codec charset-normalizer finds most likely for `sample` ('utf-8' when it is
    plain ASCII, empty, or looks binary; near-ties go to the more common codec)."""
    from charset_normalizer import from_bytes

    if not sample or sample.isascii():
        return "utf-8"
    results = list(from_bytes(sample))
    if not results:
        return "utf-8"
    best = results[0]
    near = {codecs.lookup(m.encoding).name: m for m in results
            if m.chaos <= best.chaos + _NEAR}
    name = next((c for c in _COMMON if c in near), codecs.lookup(best.encoding).name)
    return "utf-8" if name == "ascii" else name


class TextStream:
    """The UTF-8 byte pieces of one file (`iter(stream)`), with what was learned reading it:
    `encoding` (the codec used, detected when asked for 'auto') and `error` (why the file
    could not be read to its end, or None)."""

    def __init__(self, loc: Location, encoding: str = "utf-8",
                 chunk_bytes: int = CHUNK_BYTES) -> None:
        self.loc = loc
        self.requested = codec_name(encoding)
        self.encoding = self.requested
        self.chunk_bytes = chunk_bytes
        self.error: str | None = None

    def _raw_pieces(self, fh: Any) -> Iterator[bytes]:
        """Pieces of `chunk_bytes`; a compressed stream is read in small steps so that
        what decompressed before a break is still handed out before the error."""
        if compression_of(self.loc.name) is None:
            while piece := fh.read(self.chunk_bytes):
                yield bytes(piece)
            return
        buf = bytearray()
        try:
            while part := fh.read(min(self.chunk_bytes, _STEP_BYTES)):
                buf += part
                if len(buf) >= self.chunk_bytes:
                    yield bytes(buf)
                    buf.clear()
        except (OSError, EOFError, ValueError):
            if buf:
                yield bytes(buf)
            raise
        if buf:
            yield bytes(buf)

    def __iter__(self) -> Iterator[bytes]:
        try:
            with open_input(self.loc) as fh:
                pieces = self._raw_pieces(fh)
                first = next(pieces, b"")
                if self.requested == AUTO:
                    self.encoding = detect_encoding(first[:DETECT_BYTES])
                decoder = (None if self.encoding == "utf-8" else
                           codecs.getincrementaldecoder(self.encoding)(_UNDECODABLE))
                piece = first
                while piece:
                    if decoder is None:
                        yield piece
                    else:
                        yield decoder.decode(piece).encode("utf-8", "surrogatepass")
                    piece = next(pieces, b"")
                if decoder is not None:
                    tail = decoder.decode(b"", final=True)
                    if tail:
                        yield tail.encode("utf-8", "surrogatepass")
        except (OSError, EOFError, ValueError) as exc:  # truncated/corrupt compression
            self.error = f"{type(exc).__name__}: {exc}"[:300]


# ---------------------------------------------------------------------------------------
# Splitting (read_lines) and counting (count_nonblank_lines): two algorithms.


def split_piece(piece: bytes, first_line: int, path: str, encoding: str) -> pa.RecordBatch:
    """The non-blank lines of `piece` (whole lines: it ends at a newline or at the end of
    its file) as a `_ARROW_LINES` batch numbered from `first_line`.

    Vectorized over the piece: newline positions, one OR-reduce per line for "has a
    non-blank byte", and a byte mask gathering the kept lines' bytes into one Arrow data
    buffer (a trailing CR of CRLF is dropped). Memory: a few bytes per byte of the piece."""
    buf = np.frombuffer(piece, dtype=np.uint8)
    n = len(buf)
    ends = np.flatnonzero(buf == 0x0A)
    starts = np.empty(len(ends) + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends + 1
    stops = np.empty_like(starts)
    stops[:-1] = ends
    stops[-1] = n
    if n and len(ends) and ends[-1] == n - 1:  # no line after the final newline
        starts, stops = starts[:-1], stops[:-1]
    line_no = np.arange(first_line, first_line + len(starts), dtype=np.int64)
    if n:
        nonblank = ~_blank(buf)
        keep = np.logical_or.reduceat(nonblank, starts) if len(starts) else starts.astype(bool)
        # reduceat over an empty range returns the element at its start; lines are never
        # empty ranges here except a last line of zero bytes.
        keep &= stops > starts
        del nonblank
    else:
        keep = np.zeros(len(starts), dtype=bool)
    has_cr = (stops > starts) & (buf[np.maximum(stops - 1, 0)] == 0x0D) if n else keep
    stops = stops - has_cr
    starts, stops, line_no = starts[keep], stops[keep], line_no[keep]
    # One mask over the piece: +1 at each kept line's start, -1 at its stop.
    # Lines never overlap and a stop never meets another line's start: no index repeats.
    delta = np.zeros(n + 1, dtype=np.int8)
    delta[starts] = 1
    delta[stops] -= 1
    mask = np.cumsum(delta[:n], dtype=np.int8).view(bool) if n else np.zeros(0, dtype=bool)
    del delta
    data = buf[mask]
    del mask
    offsets = np.zeros(len(starts) + 1, dtype=np.int32)
    np.cumsum(stops - starts, out=offsets[1:])
    raw = pa.Array.from_buffers(pa.binary(), len(starts),
                                [None, pa.py_buffer(offsets), pa.py_buffer(data)])
    try:
        text = raw.cast(pa.string())  # validates UTF-8 for the whole piece at once
    except pa.ArrowInvalid:
        decoded: list[str | None] = []
        for item in raw.to_pylist():
            try:
                decoded.append(item.decode("utf-8"))
            except UnicodeDecodeError:
                decoded.append(None)
        text = pa.array(decoded, type=pa.string())
    rows = len(starts)
    return pa.RecordBatch.from_arrays(
        [pa.array([path] * rows, pa.string()), pa.array(line_no), text, raw,
         pa.array([encoding] * rows, pa.string()), pa.nulls(rows, pa.string())],
        schema=_ARROW_LINES)


def _error_batch(path: str, line: int, encoding: str, error: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        [pa.array([path]), pa.array([line], pa.int64()), pa.nulls(1, pa.string()),
         pa.array([error.encode()], pa.binary()), pa.array([encoding]), pa.array([error])],
        schema=_ARROW_LINES)


def iter_lines(loc: Location, encoding: str = "utf-8",
               chunk_bytes: int = CHUNK_BYTES) -> Iterator[pa.RecordBatch]:
    """The non-blank lines of one file as `_ARROW_LINES` batches, one per piece (see the
    module docstring); a final one-row batch with `error` if the file breaks off."""
    stream = TextStream(loc, encoding, chunk_bytes)
    carry = b""
    line = 1
    for chunk in stream:
        piece = carry + chunk if carry else chunk
        cut = piece.rfind(b"\n")
        if cut < 0:
            carry = piece  # a line longer than a piece: keep reading
            continue
        whole, carry = piece[:cut + 1], piece[cut + 1:]
        del piece
        batch = split_piece(whole, line, loc.url, stream.encoding)
        line += whole.count(b"\n")
        del whole
        if batch.num_rows:
            yield batch
    if carry:
        batch = split_piece(carry, line, loc.url, stream.encoding)
        if batch.num_rows:
            yield batch
        line += 1
    if stream.error is not None:
        yield _error_batch(loc.url, line, stream.encoding, stream.error)


def count_lines(loc: Location, encoding: str = "utf-8",
                chunk_bytes: int = CHUNK_BYTES) -> int:
    """Non-blank lines of one file (+1 when it breaks off), counted without splitting: a
    non-blank line is a run of non-blank bytes whose nearest non-whitespace predecessor
    is a newline (or the start of the file)."""
    stream = TextStream(loc, encoding, chunk_bytes)
    count = 0
    after_newline = True  # the stream starts as if after a newline
    for chunk in stream:
        buf = np.frombuffer(chunk, dtype=np.uint8)
        keep = ~_blank(buf)
        keep |= buf == 0x0A
        visible = buf[keep]  # newlines and non-blank bytes
        del keep
        if not len(visible):
            continue
        is_nl = visible == 0x0A
        prev_nl = np.empty(len(visible), dtype=bool)
        prev_nl[0] = after_newline
        prev_nl[1:] = is_nl[:-1]
        count += int(np.count_nonzero(~is_nl & prev_nl))
        after_newline = bool(is_nl[-1])
    return count + (stream.error is not None)


def read_lines(spark: SparkSession, files: Sequence[Location],
               encoding: str = "utf-8") -> DataFrame:
    """One row per non-blank line of `files`: path (the file's URL), line (1-based), text
    (None when the line is not valid in the file's encoding), raw (the line's bytes as
    UTF-8 (decoded from the file's encoding), without its line ending), encoding (the codec
    read with) and error (set only on a last row for a file that breaks off)."""
    enc = codec_name(encoding)
    return map_files(spark, files, lambda loc: iter_lines(loc, enc), LINES_SCHEMA)


_COUNT_SCHEMA = pa.schema([("n", pa.int64())])


def count_nonblank_lines(spark: SparkSession, files: Sequence[Location],
                         encoding: str = "utf-8") -> int:
    """Non-blank lines of `files` (a newline ends a line; blank = only ASCII whitespace),
    plus one per file that breaks off: what `read_lines` must return, counted apart from
    its splitting (`count_lines`)."""
    if not files:
        return 0
    enc = codec_name(encoding)

    def count(loc: Location) -> Iterator[pa.RecordBatch]:
        yield pa.RecordBatch.from_pydict({"n": [count_lines(loc, enc)]}, schema=_COUNT_SCHEMA)

    row = map_files(spark, files, count, "n long").agg(F.sum("n").alias("n")).first()
    return int((row["n"] if row is not None else 0) or 0)


def read_whole(loc: Location, encoding: str = "utf-8") -> pa.RecordBatch:
    """One file as one `_ARROW_LINES` row (line null): its UTF-8 text (None when it does
    not decode), its bytes as UTF-8, the codec, and `error` when it breaks off."""
    stream = TextStream(loc, encoding)
    data = b"".join(stream)
    raw = pa.array([data], pa.binary())
    try:
        text = raw.cast(pa.string())
    except pa.ArrowInvalid:
        text = pa.nulls(1, pa.string())
    if stream.error is not None:
        text = pa.nulls(1, pa.string())
    return pa.RecordBatch.from_arrays(
        [pa.array([loc.url]), pa.nulls(1, pa.int64()), text, raw,
         pa.array([stream.encoding]), pa.array([stream.error], pa.string())],
        schema=_ARROW_LINES)


def whole_text_files(spark: SparkSession, files: Sequence[Location],
                     encoding: str = "utf-8") -> DataFrame:
    """One row per file, in `read_lines`' shape with a null `line`: for formats where a
    file is one record (plain .txt documents). A file is held whole in memory."""
    enc = codec_name(encoding)
    return map_files(spark, files, lambda loc: iter([read_whole(loc, enc)]), LINES_SCHEMA)
