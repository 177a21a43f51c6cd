"""Text records from tables: CSV/TSV (optionally compressed) and Parquet files with a text
column, e.g. a Parquet dump of a Hugging Face dataset.

Each table row is one record, read in the executors in bounded batches (pyarrow's
streaming CSV reader, Parquet row groups) through the file's Location, never expanded as a
glob. The configured `text_field` names the text column; `id_field` and `label_field` are
optional columns (absent: null). A row's `line` is its 1-based record number in the file
(the header is not a record; a quoted field may span lines). Per row, as in JSONL:

- MISSING_FIELD: the file has no text column, or the value is null / not a string;
- MALFORMED_ROW: a CSV row with the wrong number of fields;
- UNREADABLE_FILE: the file breaks off (bad compression, not in its encoding, corrupt
  Parquet): the rows read before the error are kept, then one row says why.

CSV files are decoded by pyarrow from the input's `encoding` (`auto`: detected on the
first bytes), strictly: a byte that does not decode ends the file with UNREADABLE_FILE.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession

from pipeline.ingest.lines import AUTO, DETECT_BYTES, codec_name, detect_encoding, open_input
from pipeline.ingest.listing import base_name
from pipeline.spark_io import map_files
from pipeline.storage import Location

TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet")
#: the tables that may be compressed (Parquet compresses inside the file)
COMPRESSIBLE_TABLES = (".csv", ".tsv")
RECORDS_SCHEMA = ("path string, line long, raw binary, line_text string, text string, "
                  "label string, raw_id string, reason string, detail string, "
                  "encoding string, error string")
_ARROW = pa.schema([("path", pa.string()), ("line", pa.int64()), ("raw", pa.binary()),
                    ("line_text", pa.string()), ("text", pa.string()),
                    ("label", pa.string()), ("raw_id", pa.string()),
                    ("reason", pa.string()), ("detail", pa.string()),
                    ("encoding", pa.string()), ("error", pa.string())])
_BATCH_ROWS = 4096
_CSV_BLOCK = 1 << 20


def _strings(column: Any, rows: int) -> pa.Array:
    if column is None:
        return pa.nulls(rows, pa.string())
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string())
    return pc.cast(column, pa.string(), safe=False)


def _batch(path: str, numbers: Any, table: pa.RecordBatch | pa.Table, text_field: str,
           id_field: str, label_field: str, encoding: str) -> pa.RecordBatch:
    """Records of one batch of rows; MISSING_FIELD where the text is absent or not text."""
    rows = table.num_rows
    names = table.schema.names
    column = table.column(text_field) if text_field in names else None
    if column is None:
        text = pa.nulls(rows, pa.string())
        why = f"the file has no column '{text_field}' (columns: {', '.join(names)[:200]})"
        detail = pa.array([why] * rows, pa.string())
    elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        text = pa.nulls(rows, pa.string())
        detail = pa.array([f"the '{text_field}' column is {column.type}, not a string"] * rows,
                          pa.string())
    else:
        text = column.cast(pa.string())
        detail = pc.if_else(pc.is_null(text), pa.scalar(f"the '{text_field}' field is null"),
                            pa.scalar(None, pa.string()))
    reason = pc.if_else(pc.is_null(detail), pa.scalar(None, pa.string()),
                        pa.scalar("MISSING_FIELD"))
    shown = text if column is None or text.null_count < rows else _strings(column, rows)
    return pa.RecordBatch.from_arrays([
        pa.array([path] * rows, pa.string()),
        pa.array(numbers, pa.int64()),
        pc.cast(pc.fill_null(shown, ""), pa.binary()),
        shown, text,
        _strings(table.column(label_field) if label_field in names else None, rows),
        _strings(table.column(id_field) if id_field in names else None, rows),
        reason, detail,
        pa.array([encoding] * rows, pa.string()), pa.nulls(rows, pa.string()),
    ], schema=_ARROW)


def _problem(path: str, line: int | None, reason: str, detail: str, raw: str,
             encoding: str, error: str | None = None) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([{
        "path": path, "line": line, "raw": raw.encode(), "line_text": raw, "text": None,
        "label": None, "raw_id": None, "reason": reason, "detail": detail[:300],
        "encoding": encoding, "error": error}], schema=_ARROW)


def _csv_records(loc: Location, encoding: str, fields: tuple[str, str, str]
                 ) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    if encoding == AUTO:
        with open_input(loc) as fh:
            encoding = detect_encoding(fh.read(DETECT_BYTES))
    text_field, id_field, label_field = fields
    bad: list[tuple[int | None, str]] = []
    skipped: set[int] = set()  # record numbers of malformed rows, which the batches skip

    def invalid(row: Any) -> str:
        # pyarrow counts the header as row 1; a record's number does not.
        number = None if row.number is None else int(row.number) - 1
        bad.append((number, str(row.text)[:600]))
        if number is not None:
            skipped.add(number)
        return "skip"

    delimiter = "\t" if base_name(loc.name).endswith(".tsv") else ","
    done = 0
    try:
        with open_input(loc) as fh:
            reader = pacsv.open_csv(
                fh,
                read_options=pacsv.ReadOptions(encoding=encoding, block_size=_CSV_BLOCK),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                  invalid_row_handler=invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: pa.string() for name in fields},
                    strings_can_be_null=False))
            for batch in reader:
                if batch.num_rows:
                    # The malformed rows parsed with this batch are known by now: the good
                    # rows take the record numbers around them.
                    ahead = np.arange(done + 1, done + 1 + batch.num_rows + len(skipped))
                    numbers = ahead[~np.isin(ahead, list(skipped))][: batch.num_rows]
                    yield _batch(loc.url, numbers, batch, text_field, id_field, label_field,
                                 encoding)
                    done = int(numbers[-1])
                while bad:
                    number, text = bad.pop(0)
                    yield _problem(loc.url, number, "MALFORMED_ROW",
                                   "the CSV row has the wrong number of fields", text,
                                   encoding)
    except (pa.ArrowInvalid, OSError, UnicodeError, ValueError) as exc:
        for number, text in bad:
            yield _problem(loc.url, number, "MALFORMED_ROW",
                           "the CSV row has the wrong number of fields", text, encoding)
        if "Empty CSV file" in str(exc):
            return  # no header, no records
        error = f"{type(exc).__name__}: {exc}"[:300]
        yield _problem(loc.url, done + 1, "UNREADABLE_FILE",
                       f"the file cannot be read past record {done}: {error}", "", encoding,
                       error)


def _parquet_records(loc: Location, fields: tuple[str, str, str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    text_field, id_field, label_field = fields
    done = 0
    try:
        with loc.open("rb") as fh:
            parquet = pq.ParquetFile(fh)
            names = parquet.schema_arrow.names
            # Without any of the fields, one other column still gives the row count.
            present = [n for n in dict.fromkeys(fields) if n in names] or names[:1]
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=present):
                if batch.num_rows:
                    yield _batch(loc.url, np.arange(done + 1, done + 1 + batch.num_rows),
                                 batch, text_field, id_field, label_field, "parquet")
                    done += batch.num_rows
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
        yield _problem(loc.url, done + 1, "UNREADABLE_FILE",
                       f"the file cannot be read past record {done}: {error}", "", "parquet",
                       error)


def table_records(spark: SparkSession, files: Sequence[Location], text_field: str,
                  id_field: str, label_field: str, encoding: str = "utf-8") -> DataFrame:
    """One row per table row of `files` (CSV, TSV, Parquet by extension): `RECORDS_SCHEMA`,
    with `reason`/`detail` set where the row is already known to be bad."""
    enc = codec_name(encoding)
    fields = (text_field, id_field, label_field)

    def read(loc: Location) -> Iterator[pa.RecordBatch]:
        if base_name(loc.name).endswith(".parquet"):
            return _parquet_records(loc, fields)
        return _csv_records(loc, enc, fields)

    return map_files(spark, files, read, RECORDS_SCHEMA)
