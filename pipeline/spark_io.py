"""Spark <-> storage file I/O through fsspec `Location`s, in the executors.

Spark's own readers and writers open files through Hadoop, which knows nothing of the
fsspec options in `storage.options` (an S3 endpoint, a region) and, without the
hadoop-aws jar, cannot open s3:// at all. Every file the Spark stages read or write
under the storage root, or as raw input, therefore goes through this module: the
DataFrame holds only an index into a list of pickled `Location`s, and a `mapInArrow`
function opens each file with the Location's own filesystem inside the executor. The data
moves as Arrow batches throughout (no row-at-a-time Python).

- `read_files`: raw files as rows `path, content, length` (the binary file source's
  columns; `path` is the file's URL, `file:///x` for local files);
- `map_files`: a streaming reader function run per file in the executors;
- `read_parquet`: Parquet files as a DataFrame (schema read from the first file);
- `write_parquet`: deterministic `part-NNNNN.parquet` files written by the tasks.

An empty list of files reads as an empty DataFrame of the expected schema. Files are
opened by the exact path their Location holds: nothing here expands glob characters
(`a[1].jsonl` is read as that file; Spark's file sources would expand it).
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.storage import Location, schema_fingerprint

log = logging.getLogger(__name__)

FILES_SCHEMA = "path string, content binary, length long"
_ARROW_FILES = pa.schema([("path", pa.string()), ("content", pa.binary()),
                          ("length", pa.int64())])
# A task hands a batch to Spark once it holds this many bytes or files.
_BATCH_BYTES = 32 * 1024 * 1024
_BATCH_FILES = 256
_PARQUET_BATCH_ROWS = 1024


def _sizes(files: Sequence[Location]) -> list[int]:
    """Sizes of `files`, one batched call per filesystem (object stores answer those
    concurrently, and usually from the listing's cache)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, loc in enumerate(files):
        groups.setdefault((loc.protocol, repr(sorted(loc.options.items()))), []).append(i)
    sizes = [0] * len(files)
    for members in groups.values():
        fs = files[members[0]].fs
        got = fs.sizes([files[i].path for i in members])
        for i, size in zip(members, got, strict=True):
            sizes[i] = int(size or 0)
    return sizes


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def _conf_bytes(spark: SparkSession, key: str, default: int) -> int:
    """A byte-size setting ("134217728", "128MB", "512k") in bytes."""
    value = str(spark.conf.get(key, str(default)) or default).strip().lower()
    match = re.fullmatch(r"([0-9]+)\s*([a-z]*)", value)
    if match is None or match.group(2) not in _UNITS:
        return default
    return int(match.group(1)) * _UNITS[match.group(2)]


def _pack(spark: SparkSession, sizes: Sequence[int]) -> list[list[int]]:
    """Consecutive files grouped into tasks the way Spark's file sources size their
    partitions (`maxPartitionBytes`, `openCostInBytes`, at least the default parallelism),
    keeping the files' order."""
    max_bytes = _conf_bytes(spark, "spark.sql.files.maxPartitionBytes", 128 * 1024 * 1024)
    open_cost = _conf_bytes(spark, "spark.sql.files.openCostInBytes", 4 * 1024 * 1024)
    parallelism = max(1, spark.sparkContext.defaultParallelism)
    total = sum(sizes) + open_cost * len(sizes)
    target = min(max_bytes, max(open_cost, total // parallelism))
    groups: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i, size in enumerate(sizes):
        cost = size + open_cost
        if current and used + cost > target:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += cost
    if current:
        groups.append(current)
    return groups


def read_files(spark: SparkSession, files: Sequence[Location],
               max_bytes: int | None = None) -> DataFrame:
    """One row per file of `files`, in their order: `path` (the file's URL), `content`
    (its bytes) and `length` (its size). Empty files are rows with empty content.

    Files are read in the executors through their Location (and its fsspec options), so
    any store fsspec reaches works. With `max_bytes`, a file larger than that is not read
    at all: its row has a null `content` and the listed `length`. One file must fit in an
    executor's memory (and in 2 GiB, an Arrow binary value's limit)."""
    if not files:
        return spark.createDataFrame([], FILES_SCHEMA)
    locs = list(files)
    sizes = _sizes(locs)
    groups = [[(locs[i], sizes[i]) for i in group] for group in _pack(spark, sizes)]
    limit = max_bytes

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        rows: dict[str, list[object]] = {"path": [], "content": [], "length": []}
        held = 0
        for batch in batches:
            for g in batch.column(0).to_pylist():
                for loc, listed in groups[g]:
                    if limit is not None and listed > limit:
                        content, length = None, listed
                    else:
                        with loc.open("rb") as fh:
                            content = bytes(fh.read())
                        length = len(content)
                        held += length
                    rows["path"].append(loc.url)
                    rows["content"].append(content)
                    rows["length"].append(length)
                    if held >= _BATCH_BYTES or len(rows["path"]) >= _BATCH_FILES:
                        yield pa.RecordBatch.from_pydict(rows, schema=_ARROW_FILES)
                        rows = {"path": [], "content": [], "length": []}
                        held = 0
        if rows["path"]:
            yield pa.RecordBatch.from_pydict(rows, schema=_ARROW_FILES)

    ids = spark.range(0, len(groups), 1, numPartitions=len(groups))
    return ids.mapInArrow(read, FILES_SCHEMA)


def map_files(spark: SparkSession, files: Sequence[Location],
              read: Callable[[Location], Iterator[pa.RecordBatch]],
              schema: str | T.StructType) -> DataFrame:
    """`read(file)` for each of `files` in the executors, files packed into tasks as
    `read_files` packs them (in order); the batches it yields are the rows, of `schema`.

    For readers that stream a file in bounded pieces instead of holding it whole. `read`
    must pickle (a module-level function, or a closure over picklable values)."""
    if not files:
        return spark.createDataFrame([], schema)
    locs = list(files)
    groups = [[locs[i] for i in group] for group in _pack(spark, _sizes(locs))]

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for g in batch.column(0).to_pylist():
                for loc in groups[g]:
                    yield from read(loc)

    ids = spark.range(0, len(groups), 1, numPartitions=len(groups))
    return ids.mapInArrow(run, schema)


def as_nullable(data_type: T.DataType) -> T.DataType:
    """`data_type` with every field, element and value nullable, as Spark's file sources
    make the schema of what they read."""
    if isinstance(data_type, T.StructType):
        return T.StructType([T.StructField(f.name, as_nullable(f.dataType), True, f.metadata)
                             for f in data_type.fields])
    if isinstance(data_type, T.ArrayType):
        return T.ArrayType(as_nullable(data_type.elementType), True)
    if isinstance(data_type, T.MapType):
        return T.MapType(as_nullable(data_type.keyType), as_nullable(data_type.valueType),
                         True)
    return data_type


def read_parquet(spark: SparkSession, files: Sequence[Location],
                 schema: T.StructType | str | None = None) -> DataFrame:
    """The rows of the Parquet `files`, one task per file, in file order.

    The schema is the first file's (every column nullable, as `spark.read.parquet` gives
    it); the other files must share it. `schema` is used when there are no files, which
    reads as an empty DataFrame; without it, no files is a ValueError."""
    from pyspark.sql.pandas.types import from_arrow_schema

    locs = list(files)
    if not locs:
        if schema is None:
            raise ValueError("no Parquet files to read, and no schema for an empty table")
        return spark.createDataFrame([], schema)
    import pyarrow.parquet as pq

    with locs[0].open("rb") as fh:
        file_schema = pq.read_schema(fh)
    spark_schema = as_nullable(from_arrow_schema(file_schema))
    assert isinstance(spark_schema, T.StructType)
    target = _to_arrow(spark_schema)

    def read(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        for batch in batches:
            for i in batch.column(0).to_pylist():
                with locs[i].open("rb") as fh:
                    parquet = pq.ParquetFile(fh)
                    for part in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS,
                                                     columns=target.names):
                        yield _conform(part, target)

    ids = spark.range(0, len(locs), 1, numPartitions=len(locs))
    return ids.mapInArrow(read, spark_schema)


def parquet_files(folder: Location) -> list[Location]:
    """The Parquet files at or below `folder`, sorted (none when it does not exist)."""
    return [f for f in folder.files() if f.name.endswith(".parquet")
            and not f.name.startswith((".", "_"))]


def write_parquet(df: DataFrame, folder: Location, key_cols: Sequence[str],
                  partitions: int) -> int:
    """Write `df` deterministically as zstd Parquet files `part-NNNNN.parquet` in `folder`;
    returns the number of rows written. An empty partition writes no file; an empty table
    writes one file with the schema and no rows (`write_empty_parquet`).

    Rows go to a partition by a hash of `key_cols` (stable across runs, unlike range
    bounds sampled per job) and are sorted by `key_cols` within it. Each task then writes
    its partition with pyarrow through `folder`'s filesystem, in the executor: Spark's own
    Parquet writer lists column encodings in the footer in a different order on every JVM
    run, so its files are never byte-identical. A retried task rewrites the same name with
    the same bytes.
    """
    schema = arrow_schema(df)
    keys = [F.col(c) for c in key_cols]
    ordered = df.repartition(partitions, *keys).sortWithinPartitions(*keys)

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part = ctx.partitionId() if ctx is not None else 0
        fs, path = folder.filesystem()
        target = posixpath.join(path, f"part-{part:05d}.parquet")
        rows = 0
        writer: pq.ParquetWriter | None = None
        handle = None
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                if writer is None:
                    fs.makedirs(path, exist_ok=True)
                    handle = fs.open(target, "wb")
                    writer = pq.ParquetWriter(handle, schema, compression="zstd")
                writer.write_batch(_conform(batch, schema))
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
            if handle is not None:
                handle.close()
        yield pa.RecordBatch.from_pydict({"rows": [rows]}, schema=_WRITE_STATS)

    stats = ordered.mapInArrow(write_partition, "rows long").collect()
    total = int(sum(r["rows"] for r in stats))
    if total == 0:
        write_empty_parquet(folder, schema)
    return total


def write_empty_parquet(folder: Location, schema: pa.Schema) -> None:
    """`folder/part-00000.parquet` with `schema` and no rows: an empty table is still a
    table (readers get its schema from the file, a folder never goes missing)."""
    import pyarrow.parquet as pq

    fs, path = folder.filesystem()
    fs.makedirs(path, exist_ok=True)
    with fs.open(posixpath.join(path, "part-00000.parquet"), "wb") as handle:
        pq.write_table(schema.empty_table(), handle, compression="zstd")


_WRITE_STATS = pa.schema([("rows", pa.int64())])


def _to_arrow(schema: T.StructType) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(schema, timezone="UTC")


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Cast a batch to the target schema (Spark may hand over large_string/large_binary)."""
    if batch.schema.equals(schema):
        return batch
    return pa.RecordBatch.from_arrays(
        [batch.column(i).cast(f.type) for i, f in enumerate(schema)], schema=schema)


def arrow_schema(df: DataFrame) -> pa.Schema:
    """The Arrow schema of a DataFrame as our Parquet files store it (timestamps in UTC)."""
    return _to_arrow(df.schema)


def spark_schema_fingerprint(df: DataFrame) -> str:
    """Fingerprint of a DataFrame's schema in Arrow terms (what Parquet readers see)."""
    return schema_fingerprint(arrow_schema(df))
