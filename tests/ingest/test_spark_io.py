"""pipeline.spark_io: files and Parquet read and written by Spark through fsspec Locations."""

from __future__ import annotations

import datetime as dt
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pyspark.sql import types as T

from pipeline.ingest.lines import count_nonblank_lines, list_input_files, read_lines
from pipeline.spark_io import (
    parquet_files,
    read_files,
    read_parquet,
    spark_schema_fingerprint,
    write_parquet,
)
from pipeline.storage import Location

pytestmark = pytest.mark.integration


def _loc(path: Path) -> Location:
    return Location(str(path))


def test_read_files_in_order_with_urls_lengths_and_empty_files(spark: Any,
                                                                tmp_path: Path) -> None:
    names = [f"f{i:02d}.bin" for i in range(12)]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(bytes([i]) * i)  # f00 is empty
    files = [_loc(tmp_path / n) for n in names]
    rows = read_files(spark, files).collect()
    assert [r["path"] for r in rows] == [f"file://{tmp_path.resolve()}/{n}" for n in names]
    assert [r["length"] for r in rows] == list(range(12))
    assert [bytes(r["content"]) for r in rows] == [bytes([i]) * i for i in range(12)]


def test_read_files_never_reads_a_file_over_max_bytes(spark: Any, tmp_path: Path) -> None:
    # 3 GiB (sparse): read at all, it would not fit in an Arrow binary value.
    huge = tmp_path / "huge.png"
    with huge.open("wb") as fh:
        fh.truncate(3 * 1024**3)
    (tmp_path / "small.png").write_bytes(b"abc")
    rows = {Path(r["path"]).name: r for r in
            read_files(spark, [_loc(huge), _loc(tmp_path / "small.png")], max_bytes=10
                       ).collect()}
    assert rows["huge.png"]["content"] is None
    assert rows["huge.png"]["length"] == 3 * 1024**3
    assert bytes(rows["small.png"]["content"]) == b"abc"


def test_no_files_read_as_empty_frames(spark: Any, tmp_path: Path) -> None:
    assert read_files(spark, []).count() == 0
    assert read_lines(spark, []).columns == ["path", "line", "text", "raw", "encoding",
                                             "error"]
    assert count_nonblank_lines(spark, []) == 0
    empty = read_parquet(spark, [], "a string, b long")
    assert empty.count() == 0 and empty.columns == ["a", "b"]
    with pytest.raises(ValueError, match="no Parquet files"):
        read_parquet(spark, [])
    assert parquet_files(_loc(tmp_path / "absent")) == []


def test_line_count_agrees_with_the_line_reader(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_bytes(b"one\r\n\r\n  \t\ntwo\n\xff\xfe\nthree")  # no final \n
    (tmp_path / "b.jsonl").write_bytes(b"\n\n\x0b\x0c\n")  # blank only
    (tmp_path / "c.jsonl").write_bytes(b"")
    files = list_input_files([_loc(tmp_path)], [".jsonl"])
    lines = read_lines(spark, files).collect()
    assert [(Path(r["path"]).name, r["line"]) for r in lines] == [
        ("a.jsonl", 1), ("a.jsonl", 4), ("a.jsonl", 5), ("a.jsonl", 6)]
    assert [r["text"] for r in lines] == ["one", "two", None, "three"]  # \xff: not UTF-8
    assert count_nonblank_lines(spark, files) == len(lines) == 4


def test_listing_skips_markers_and_keeps_the_store_options(tmp_path: Path) -> None:
    for rel in ("a/x.csv", "a/_SUCCESS.csv", "a/.hidden.csv", "b/y.CSV", "b/z.txt",
                "_staging/w.csv"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("1\n")
    root = Location(str(tmp_path), {"auto_mkdir": True})
    found = list_input_files([root, root / "a/x.csv"], [".csv"])
    assert [f.url for f in found] == [f"{root.url}/a/x.csv", f"{root.url}/b/y.CSV"]
    assert all(f.options == root.options for f in found)


def test_write_then_read_parquet_round_trips_deterministically(spark: Any,
                                                                tmp_path: Path) -> None:
    rows = [(f"id{i:03d}", i, Decimal(f"{i}.25"), dt.datetime(2024, 1, 1, 0, i % 60,
                                                               tzinfo=dt.UTC),
             None if i % 3 else f"x{i}", bytearray(b"\x00" * (i % 4)), i % 2 == 0)
            for i in range(100)]
    schema = ("id string not null, n long, amount decimal(18,2), ts timestamp, "
              "note string, raw binary, flag boolean")
    df = spark.createDataFrame(rows, schema)
    folder = _loc(tmp_path / "one")
    assert write_parquet(df, folder, ["id"], 3) == 100
    files = parquet_files(folder)
    assert [f.name for f in files] == ["part-00000.parquet", "part-00001.parquet",
                                       "part-00002.parquet"]
    assert write_parquet(df, _loc(tmp_path / "two"), ["id"], 3) == 100
    for f in files:  # byte-identical on a second write
        assert f.read_bytes() == (tmp_path / "two" / f.name).read_bytes()
    with files[0].open() as fh:
        ids = pq.read_table(fh).column("id").to_pylist()
    assert ids == sorted(ids)

    back = read_parquet(spark, files)
    # As spark.read.parquet gives it: same types, every column nullable.
    assert back.schema == T.StructType([T.StructField(f.name, f.dataType, True)
                                        for f in df.schema.fields])
    assert sorted(back.collect()) == sorted(df.collect())
    assert spark_schema_fingerprint(back) == spark_schema_fingerprint(
        spark.read.parquet(*[f.path for f in files]))
    assert read_parquet(spark, [files[1]]).count() == len(pq.read_table(files[1].path))


def test_an_empty_frame_writes_one_empty_file_with_its_schema(spark: Any,
                                                              tmp_path: Path) -> None:
    df = spark.createDataFrame([], "id string, n long")
    folder = _loc(tmp_path / "none")
    assert write_parquet(df, folder, ["id"], 2) == 0
    assert os.listdir(tmp_path / "none") == ["part-00000.parquet"]
    table = pq.read_table(tmp_path / "none" / "part-00000.parquet")
    assert table.num_rows == 0 and table.schema.names == ["id", "n"]
    back = read_parquet(spark, parquet_files(folder))
    assert back.count() == 0 and back.columns == ["id", "n"]
