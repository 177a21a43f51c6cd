"""pipeline.ingest.lines: streaming line splitting, counting, decompression, encodings."""

from __future__ import annotations

import bz2
import gzip
import random
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.ingest.lines import (
    TextStream,
    codec_name,
    count_lines,
    count_nonblank_lines,
    detect_encoding,
    iter_lines,
    read_lines,
)
from pipeline.storage import Location

BLANK = bytes([9, 10, 11, 12, 13, 32])


def _reference(data: bytes) -> list[tuple[int, str | None, bytes]]:
    """The definition: split on \\n, drop blank lines, strip one trailing \\r."""
    out = []
    for number, line in enumerate(data.split(b"\n"), start=1):
        if line.strip(BLANK):
            line = line[:-1] if line.endswith(b"\r") else line
            try:
                text: str | None = line.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            out.append((number, text, line))
    return out


def _read(loc: Location, **kwargs: Any) -> list[tuple[int, str | None, bytes]]:
    got: list[tuple[int, str | None, bytes]] = []
    for batch in iter_lines(loc, **kwargs):
        got += zip(batch.column("line").to_pylist(), batch.column("text").to_pylist(),
                   batch.column("raw").to_pylist(), strict=True)
    return got


@pytest.mark.unit
def test_chunked_split_equals_the_definition_at_every_chunk_size(tmp_path: Path) -> None:
    rng = random.Random(7)
    cases = [b"", b"\n", b"a", b"a\n", b"\n\na\r\n  \n b \n\t\nlast", b"x\r\n\r\ny",
             "é\n".encode() + b"\xff\n"]
    cases += [bytes(rng.choice(b"ab \n\r\t\xc3\xa9\xff") for _ in range(rng.randint(0, 80)))
              for _ in range(150)]
    for k, data in enumerate(cases):
        path = tmp_path / f"c{k}.jsonl"
        path.write_bytes(data)
        loc = Location(str(path))
        want = _reference(data)
        for chunk in (1, 2, 5, 64, 1 << 20):
            assert _read(loc, chunk_bytes=chunk) == want, (data, chunk)
            assert count_lines(loc, chunk_bytes=chunk) == len(want), (data, chunk)


@pytest.mark.unit
def test_splitting_memory_is_bounded_by_the_chunk_not_the_file(tmp_path: Path) -> None:
    """Issue 13.4: the old splitter held int64 arrays of the whole file (~25x its size).
    A 20 MB file read in 1 MiB pieces peaks under 10 MiB of Python/numpy allocations
    (measured: 6.5 MiB)."""
    line = b'{"text": "' + b"x" * 90 + b'"}\n'
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        for _ in range(20):
            fh.write(line * (1_000_000 // len(line)))
    size = path.stat().st_size
    loc = Location(str(path))
    (tmp_path / "warm.jsonl").write_bytes(line * 3)  # numpy/Arrow first-use caches aside
    list(iter_lines(Location(str(tmp_path / "warm.jsonl"))))
    arrow_base = pa.total_allocated_bytes()
    arrow_peak = 0
    tracemalloc.start()  # numpy and Python bytes; Arrow's own pool is sampled per batch
    try:
        rows = 0
        for batch in iter_lines(loc, chunk_bytes=1 << 20):
            rows += batch.num_rows
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes() - arrow_base)
            del batch
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rows == size // len(line)
    assert size > 19_000_000
    assert peak < 10 * (1 << 20), f"peak {peak / 2**20:.1f} MiB for 1 MiB pieces"
    assert arrow_peak < 4 * (1 << 20), f"Arrow pool {arrow_peak / 2**20:.1f} MiB"


@pytest.mark.unit
def test_compressed_files_read_like_the_plain_file(tmp_path: Path) -> None:
    data = b'{"text": "a"}\n\n{"text": "b"}\r\n  \n{"text": "c"}'
    want = _reference(data)
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(data[:20]) + gzip.compress(data[20:]))
    (tmp_path / "a.jsonl.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "a.jsonl.zst").write_bytes(pa.compress(data, "zstd", asbytes=True))
    for name in ("a.jsonl.gz", "a.jsonl.bz2", "a.jsonl.zst"):
        loc = Location(str(tmp_path / name))
        assert _read(loc, chunk_bytes=4) == want, name
        assert count_lines(loc, chunk_bytes=4) == len(want), name


@pytest.mark.unit
def test_a_truncated_gzip_keeps_what_was_read_and_ends_with_an_error_row(
        tmp_path: Path) -> None:
    data = b"".join(b'{"n": %d}\n' % i for i in range(5000))
    packed = gzip.compress(data)
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    loc = Location(str(path))
    batches = list(iter_lines(loc, chunk_bytes=1024))
    last = batches[-1]
    assert last.num_rows == 1 and last.column("error")[0].as_py()
    good = sum(b.num_rows for b in batches[:-1])
    assert 0 < good < 5000
    assert count_lines(loc, chunk_bytes=1024) == good + 1


@pytest.mark.unit
def test_declared_encodings_decode_to_utf8_and_bad_bytes_void_only_their_line(
        tmp_path: Path) -> None:
    (tmp_path / "w.txt").write_bytes("café\nnaïve – “quotes”\n".encode("cp1252"))
    assert [t for _, t, _ in _read(Location(str(tmp_path / "w.txt")), encoding="cp1252")] \
        == ["café", "naïve – “quotes”"]
    # 0x81 is undefined in cp1252: that line has no text, the next one is fine.
    (tmp_path / "bad.txt").write_bytes(b"ok\nbad \x81 byte\nfine\n")
    got = _read(Location(str(tmp_path / "bad.txt")), encoding="cp1252")
    assert [t for _, t, _ in got] == ["ok", None, "fine"]
    # UTF-16 (not ASCII-compatible) is transcoded before splitting.
    (tmp_path / "u.txt").write_bytes("one\r\ntwo\n\nthree".encode("utf-16"))
    got = _read(Location(str(tmp_path / "u.txt")), encoding="utf-16", chunk_bytes=3)
    assert got == [(1, "one", b"one"), (2, "two", b"two"), (4, "three", b"three")]
    assert count_lines(Location(str(tmp_path / "u.txt")), "utf-16", chunk_bytes=3) == 3


@pytest.mark.unit
def test_auto_detects_per_file(tmp_path: Path) -> None:
    text = ("Le cœur a ses raisons que la raison ne connaît point. Ça, c'est déjà vu, "
            "répété à l'été. ") * 20
    (tmp_path / "w.txt").write_bytes(text.encode("cp1252"))
    (tmp_path / "u.txt").write_bytes(text.encode("utf-8"))
    (tmp_path / "a.txt").write_bytes(b"plain ascii\n")
    found = {}
    for name in ("w.txt", "u.txt", "a.txt"):
        stream = TextStream(Location(str(tmp_path / name)), "auto")
        assert b"".join(stream).decode("utf-8").startswith(("Le cœur", "plain"))
        found[name] = stream.encoding
    assert found["u.txt"] == found["a.txt"] == "utf-8"
    assert found["w.txt"] != "utf-8"
    assert detect_encoding(b"") == "utf-8"
    assert codec_name("UTF8") == "utf-8" and codec_name("Auto") == "auto"
    with pytest.raises(LookupError):
        codec_name("no-such-codec")


@pytest.mark.integration
def test_spark_reader_and_counter_agree_on_mixed_files(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"one\r\n\r\n  \t\ntwo\n\xff\xfe\nthree")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"x\n\ny\n"))
    files = [Location(str(tmp_path / n)) for n in ("a.jsonl", "b.jsonl.gz")]
    rows = read_lines(spark, files).collect()
    assert [(Path(r["path"]).name, r["line"], r["text"]) for r in rows] == [
        ("a.jsonl", 1, "one"), ("a.jsonl", 4, "two"), ("a.jsonl", 5, None),
        ("a.jsonl", 6, "three"), ("b.jsonl.gz", 1, "x"), ("b.jsonl.gz", 3, "y")]
    assert {r["encoding"] for r in rows} == {"utf-8"}
    assert count_nonblank_lines(spark, files) == len(rows) == 6


@pytest.mark.unit
def test_open_input_reads_lines_of_compressed_files(tmp_path: Path) -> None:
    from pipeline.ingest.lines import open_input

    data = b"\n\na,b\n1,2\n"
    (tmp_path / "h.csv.zst").write_bytes(pa.compress(data, "zstd", asbytes=True))
    (tmp_path / "h.csv").write_bytes(data)
    for name in ("h.csv.zst", "h.csv"):
        with open_input(Location(str(tmp_path / name))) as fh:
            assert list(fh) == [b"\n", b"\n", b"a,b\n", b"1,2\n"], name
