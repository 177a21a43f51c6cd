"""Transaction ingest: a declared table (CSV, whitespace, JSONL) -> curated rows + quarantine.

The table is described by `inputs.transactions.schema` (pipeline.config_transactions): its
format and a column for each role; without one, the sample data's 10-column card format
(`DEFAULT_SCHEMA`). Every non-blank line of every input file (less each delimited file's
header) is one record and ends up either curated or quarantined with exactly one reason:
the FIRST failing check in `REASON_ORDER`. Checks run on the roles the schema maps; an
unmapped role is null in the curated table and none of its checks run. Everything is Spark
built-in functions (no Python UDF):

1. MALFORMED_ROW: not valid UTF-8; CSV with the wrong column count or an unbalanced quote;
   a whitespace line with the wrong number of fields; JSON that is not exactly one strict
   JSON object (trailing content, NaN, single quotes).
2. MISSING_FIELD: a required role (`schema.required`, default: every mapped role) absent,
   null or blank.
3. BAD_AMOUNT: not a plain decimal number ("12,50€", "1e3", "abc"), or more significant
   decimals than the currency's minor unit (JPY 0, USD 2; 2 without a currency), capped at
   the 2 the curated decimal(18,2) holds (so 3-decimal BHD amounts like "1.234" are
   BAD_AMOUNT too).
4. AMOUNT_OUT_OF_RANGE: amount <= 0 (or < inputs.transactions.min_amount when set) or
   > inputs.transactions.max_amount.
5. BAD_TIMESTAMP: not a timestamp of the declared `timestamp_format`: ISO-8601
   `YYYY-MM-DD[T ]hh:mm:ss[.f]` with `Z` or `±hh[[:]mm]` (naive ones only with a
   `timezone`), epoch seconds or milliseconds, seconds from `timestamp_origin`, or a
   strftime pattern (`%y` pivots like Python: 69-99 are 19xx).
6. UNKNOWN_CURRENCY: a currency column value that is not an ISO 4217 code
   (case-insensitive; curated upper-case). A `currency_constant` is checked at config load.
7. BAD_CARD: after removing spaces and dashes, not 12-19 digits passing the Luhn check.
8. BAD_FIELD: mcc not 4 digits, the label not 0/1/true/false, country not 2 letters, a
   numeric feature not a number.

Curated schema (`curated_ddl`; `CURATED_DDL` for the default schema): the role columns
(`txn_id`, `account_token`, `card_token`, `amount` decimal(18,2), `currency`, `ts` the UTC
instant, `merchant`, `mcc`, `country`, `is_fraud` boolean), then the declared features
(numeric as double, categorical as text), `source`, `content_hash`. A table without an id
column gets `txn_id` = 16 hex digits of SHA-256 over (input root index/relative path, line):
stable wherever the input folder lives. `card_token`/`account_token` are the first 32 hex
chars (128 bits) of HMAC-SHA256(key, "card:" + digits) / HMAC-SHA256(key, "account:" +
account); a `pii` column's value becomes HMAC(key, "<column>:" + value). The prefixes keep
equal values of different columns from sharing a token. `content_hash` is the SHA-256 of the
JSON of ALL normalized curated fields (txn_id, when given, and ts included, tokens rather
than numbers, ts as epoch microseconds, `source` excluded), so exact duplicate rows share a
hash and replays (same txn_id, later ts) do not.

Formats: with a header (the default), a delimited file's first non-blank line names its
columns: exactly `schema.columns` in order when those are listed (case and quotes aside),
else the same header in every file, holding every column the schema maps; otherwise
CsvHeaderError. RFC 4180 quoting, but a record is one line (a quoted newline makes two
MALFORMED_ROW lines). `auto` reads `.csv` as CSV and `.jsonl`/`.json` as JSON Lines; extra
JSON keys are ignored; a JSON number amount is taken exactly (through the variant, never a
double).

No raw card number reaches any output: tokens replace them, details never quote the card,
account or PII values, and quarantine `raw` has the parsed card/account/PII values replaced
literally (whatever their format) before `mask_cards` masks anything card-shaped left.
"""

from __future__ import annotations

import csv
import logging
import posixpath
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import TransactionInputConfig
from pipeline.config_transactions import ROLES, TransactionSchemaConfig, strftime_to_spark
from pipeline.ingest.common import (
    CARD_MASK,
    IngestResult,
    mask_cards,
    mask_cards_py,
    one_json_value,
    quarantine_rows,
    source_with_line,
)
from pipeline.ingest.currencies import ISO_4217, codes_with_minor_unit
from pipeline.ingest.lines import (
    count_nonblank_lines,
    input_roots,
    list_input_files,
    open_input,
    read_lines,
    relative_key,
    stable_id,
)
from pipeline.ingest.tokens import TOKEN_HEX_CHARS, hmac_pads, hmac_sha256_hex, with_hmac_key
from pipeline.spark_io import map_files
from pipeline.storage import Location

log = logging.getLogger(__name__)

STAGE = "ingest"
COLUMNS: tuple[str, ...] = ("txn_id", "account", "card_number", "amount", "currency",
                            "timestamp", "merchant", "mcc", "country", "is_fraud")
CORRUPT = "_corrupt_record"
RAW_SCHEMA = ", ".join(f"{c} string" for c in (*COLUMNS, CORRUPT))
REASON_ORDER: tuple[str, ...] = ("MALFORMED_ROW", "MISSING_FIELD", "BAD_AMOUNT",
                                 "AMOUNT_OUT_OF_RANGE", "BAD_TIMESTAMP", "UNKNOWN_CURRENCY",
                                 "BAD_CARD", "BAD_FIELD")
CURATED_DDL = ("txn_id string, account_token string, card_token string, amount decimal(18,2), "
               "currency string, ts timestamp, merchant string, mcc string, country string, "
               "is_fraud boolean, source string, content_hash string")
_DECIMAL_MAX = Decimal("9999999999999999.99")  # the largest decimal(18,2)
_ACCOUNT_MASK = "[ACCOUNT]"
_PII_MASK = "[PII]"
_WS = "[\\t\\x0B\\f\\r ]"  # what lines.py counts as blank, less the newline
_NUMBER_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
_COMPRESSED = (".gz", ".bz2", ".zst")
#: every file name ending the transactions modality takes from a listing; the declared
#: format parses some (`input_extensions`), the others are quarantined UNSUPPORTED_FILE
ALL_EXTENSIONS: tuple[str, ...] = (".csv", ".tsv", ".txt", ".dat", ".asc", ".jsonl", ".json",
                                   ".ndjson", ".parquet")
_PARQUET_BATCH_ROWS = 65_536
_CSV_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, "escape": '"'}
_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
_AMOUNT_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
_DATE_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
_TS_ZONED_RE = _DATE_TIME + r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_TS_NO_ZONE_RE = _DATE_TIME + "$"


class CsvHeaderError(ValueError):
    """A CSV file whose header does not name the expected columns in the expected order."""


def luhn_valid(digits: Column) -> Column:
    """True when the all-digit string `digits` passes the Luhn check (higher-order functions
    over its reversed digit array: every second digit doubled, minus 9 above 9)."""
    values = F.transform(F.split(F.reverse(digits), ""), lambda c, i: F.when(
        i % 2 == 1, F.when(F.ascii(c) * 2 - 96 > 9, F.ascii(c) * 2 - 105)
        .otherwise(F.ascii(c) * 2 - 96)).otherwise(F.ascii(c) - 48))
    return F.aggregate(values, F.lit(0), lambda acc, x: acc + x) % 10 == 0


def _split_header(text: str, schema: TransactionSchemaConfig, fmt: str) -> list[str]:
    """The names of a header line: CSV fields (quotes honoured) or whitespace tokens."""
    if fmt == "whitespace":
        return text.split()
    return next(csv.reader([text], delimiter=schema.delimiter), [])


def _csv_headers(files: Sequence[Location], schema: TransactionSchemaConfig,
                 fmt_of: Mapping[str, str]) -> tuple[dict[str, int], tuple[str, ...]]:
    """(URL -> line number of each delimited file's header, the column names in file
    order). Headers are read on the driver (only the first non-blank line of each file).

    With `schema.columns` every header must name exactly those columns, in order (case and
    quotes aside); without, every file must have the same header and it must hold every
    column the schema maps. CsvHeaderError otherwise."""
    headers: dict[str, int] = {}
    expected = schema.columns
    found: tuple[str, ...] | None = None
    found_at = ""
    for loc in files:
        url = loc.url
        fmt = fmt_of[url]
        if fmt not in ("csv", "whitespace") or not schema.header:
            continue
        with open_input(loc) as fh:  # decompressed by suffix (.gz, .bz2, .zst)
            # bytes.strip() drops exactly the bytes lines.py counts as blank.
            first = next(((n, b) for n, b in enumerate(fh, start=1) if b.strip()), None)
        if first is None:
            continue  # an empty file has no header and no records
        number, line = first
        try:
            text = line.decode("utf-8").lstrip("\ufeff").strip()
        except UnicodeDecodeError as exc:
            raise CsvHeaderError(f"{url}: line {number}: the CSV header is not valid UTF-8") \
                from exc
        written = tuple(n.strip().strip('"').strip() for n in _split_header(text, schema, fmt))
        names = tuple(n.lower() for n in written)
        sep = schema.delimiter if fmt == "csv" else " "
        if expected:
            if names != tuple(c.lower() for c in expected):
                raise CsvHeaderError(
                    f"{url}: line {number}: the CSV header must be {sep.join(expected)!r}, "
                    f"found {mask_cards_py(text)[:300]!r}")
        elif found is None:
            lowered = {n: w for n, w in zip(names, written, strict=True)}
            missing = [c for c in schema.source_columns() if c.lower() not in lowered]
            if missing:
                raise CsvHeaderError(
                    f"{url}: line {number}: the header has no column {', '.join(missing)} "
                    f"(inputs.transactions.schema); it names {mask_cards_py(text)[:300]!r}")
            found, found_at = written, url
        elif names != tuple(n.lower() for n in found):
            raise CsvHeaderError(
                f"{url}: line {number}: the header {mask_cards_py(text)[:300]!r} differs from "
                f"the header of {found_at}; the files of one table share one header")
        headers[url] = number
    if expected:
        return headers, expected
    if found is None:  # no header read (JSON lines, or empty files): the declared names
        return headers, schema.source_columns()
    # The schema's spelling of each column it maps, the header's for the others.
    declared = {c.lower(): c for c in schema.source_columns()}
    return headers, tuple(declared.get(n.lower(), n) for n in found)

def _count_records(spark: SparkSession, files: Sequence[Location], n_headers: int) -> int:
    """Non-blank lines of `files`, less the CSV headers, counted in the JVM
    (`count_nonblank_lines`): independent of `read_lines` and of the parse, so a lost or
    doubled record shows."""
    if not files:
        return 0
    return count_nonblank_lines(spark, files) - n_headers


def _clean(c: Column) -> Column:
    """Trim ASCII whitespace; blank becomes null (so absent, null and "" are all missing)."""
    trimmed = F.regexp_replace(c, r"^\s+|\s+$", "")
    return F.when(trimmed != "", trimmed)


def _shown(c: Column) -> Column:
    """A field value quoted for a detail sentence: masked and truncated."""
    return F.concat(F.lit("'"), F.substring(mask_cards(c), 1, 64), F.lit("'"))


def _opt(cond: Column, text: Column) -> Column:
    """`text` when `cond`, else "" (concat() of a null is null)."""
    return F.when(cond, text).otherwise(F.lit(""))


def _mask_literal(raw: Column, value: Column, mask: str) -> Column:
    # Replaces the parsed value wherever it appears in the line, whatever its format
    # (dots, double spaces, letters), which mask_cards' shape rule would miss.
    return F.when(F.length(value) >= 4, F.replace(raw, value, F.lit(mask))).otherwise(raw)


def _masked_raw(schema: TransactionSchemaConfig) -> Column:
    """The line for quarantine `raw`, card, account and PII values masked (mask_cards and
    the truncation follow in quarantine_rows)."""
    raw = F.col("line_text")
    masks = [("card", schema.card, CARD_MASK), ("account", schema.account, _ACCOUNT_MASK)]
    masks += [(f"pii{i}", c, _PII_MASK) for i, c in enumerate(schema.pii)
              if c not in (schema.card, schema.account)]
    for field_name, column, mask in masks:
        if column is not None:
            raw = _mask_literal(raw, F.col(f"v_{field_name}"), mask)
    # A broken JSON line parses to all-null fields, so mask its keyed values by pattern.
    for _, column, mask in masks:
        if column is not None:
            raw = F.regexp_replace(raw, rf'("{re.escape(column)}"\s*:\s*)("[^"]*"?|[0-9][0-9 .-]*)',
                                   f'$1"{mask}"')
    return raw


def base_name(name: str) -> str:
    """A file name without its compression suffix, lower-case."""
    lower = name.lower()
    for suffix in _COMPRESSED:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def file_format(url: str, schema: TransactionSchemaConfig) -> str:
    """How one file is parsed: the schema's format, or by extension when it is `auto`
    (`.csv` is CSV with a header, anything else JSON lines)."""
    if schema.format != "auto":
        return schema.format
    return "csv" if base_name(posixpath.basename(url)).endswith(".csv") else "jsonl"


def _url_map(values: Mapping[str, Any], default: Any) -> Column:
    """Spark expression: `values[path]` for the file of the row (else `default`)."""
    distinct = set(values.values())
    if len(distinct) <= 1:
        return F.lit(next(iter(distinct)) if distinct else default)
    return F.coalesce(F.try_element_at(
        F.create_map(*[F.lit(x) for kv in sorted(values.items()) for x in kv]),
        F.col("path")), F.lit(default))


def _json_path(name: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return f"$.{name}"
    return "$['" + name.replace("'", "\\'") + "']"


def _parse(spark: SparkSession, files: Sequence[Location], headers: dict[str, int],
           fmt_of: Mapping[str, str], cols: Sequence[str],
           schema: TransactionSchemaConfig) -> DataFrame:
    """One row per record: lineage, the raw line, and each mapped role and feature as a
    cleaned string (`f_<role>`, `f_feature<i>`); `v_<name>` the uncleaned values that
    quarantine masking needs."""
    text_files = [f for f in files if fmt_of[f.url] != "parquet"]
    parquet = [f for f in files if fmt_of[f.url] == "parquet"]
    lines = read_lines(spark, text_files).select("path", "line", "text", "raw")
    kind = _url_map({f.url: fmt_of[f.url] for f in text_files}, "jsonl")
    lines = lines.select("*", kind.alias("kind"), F.lit(None).cast("array<string>").alias("pq"))
    if parquet:
        rows = map_files(spark, parquet, partial(_parquet_rows, columns=tuple(cols)),
                         _PARQUET_ROWS)
        lines = lines.unionByName(rows)
    if headers:
        header_line = F.try_element_at(
            F.create_map(*[F.lit(x) for kv in sorted(headers.items()) for x in kv]),
            F.col("path"))
        lines = lines.filter(~F.coalesce(header_line == F.col("line"), F.lit(False)))
    # Lenient decoding only feeds the masked `raw` and the field masking; a line that is
    # not strict UTF-8 is MALFORMED_ROW whatever it parses to.
    line = F.coalesce(F.col("text"), F.make_valid_utf8(F.col("raw").cast("string")))
    line = F.regexp_replace(line, "^\ufeff", "")
    is_csv, is_ws, is_json = (F.col("kind") == "csv", F.col("kind") == "whitespace",
                              F.col("kind") == "jsonl")
    is_pq = F.col("kind") == "parquet"
    csv_ddl = ", ".join([*(f"c{i} string" for i in range(len(cols))), f"{CORRUPT} string"])
    json_type = T.StructType([*(T.StructField(c, T.StringType()) for c in cols),
                              T.StructField(CORRUPT, T.StringType())])
    options = {**_CSV_OPTIONS, "sep": schema.delimiter}
    p_csv = F.when(is_csv, F.from_csv(line, csv_ddl, options))
    p_json = F.when(is_json, F.from_json(line, json_type, _JSON_OPTIONS))
    tokens = F.when(is_ws, F.split(F.regexp_replace(line, f"^{_WS}+|{_WS}+$", ""),
                                   f"{_WS}+", -1)).when(is_pq, F.col("pq"))
    # Spark's JSON reader ignores content after the first object and accepts NaN and
    # single quotes: the line's one strict JSON value (null when it is not exactly one).
    wrapped = F.when(is_json, one_json_value(line))
    json_values = F.when(wrapped.isNotNull(), F.lit(1)).otherwise(F.lit(0))
    # JSON numbers go through a double in from_json (1.0E7); the variant keeps them exact.
    json_amount = (F.try_variant_get(wrapped, _json_path(schema.amount), "string")
                   if schema.amount is not None else F.lit(None).cast("string"))
    quotes = F.length(line) - F.length(F.replace(line, F.lit('"'), F.lit("")))
    df = lines.select(
        "path", "line", "kind", line.alias("line_text"),
        F.col("text").isNull().alias("bad_utf8"), p_csv.alias("p_csv"),
        p_json.alias("p_json"), tokens.alias("tokens"),
        json_values.alias("json_values"), json_amount.alias("json_amount"),
        (quotes % 2 == 1).alias("odd_quotes"))
    index = {c: i for i, c in enumerate(cols)}

    def value(column: str) -> Column:
        i = index[column]
        return (F.when(is_csv, F.col("p_csv").getField(f"c{i}"))
                .when(is_ws | is_pq, F.try_element_at(F.col("tokens"), F.lit(i + 1)))
                .otherwise(F.col("p_json").getField(column)))

    fields: dict[str, Column] = {}
    for role in schema.mapped:
        fields[role] = _clean(value(str(schema.role_column(role))))
    if schema.amount is not None:
        fields["amount"] = _clean(F.when(~is_json, value(schema.amount))
                                  .otherwise(F.coalesce("json_amount", value(schema.amount))))
    features = list(schema.feature_columns().values())
    out = [v.alias(f"f_{k}") for k, v in fields.items()]
    out += [_clean(value(c)).alias(f"f_feature{i}") for i, c in enumerate(features)]
    raw_values = {"card": schema.card, "account": schema.account}
    raw_values.update({f"pii{i}": c for i, c in enumerate(schema.pii)})
    out += [_clean(value(c)).alias(f"v_{k}") for k, c in raw_values.items() if c is not None]
    corrupt = F.coalesce(F.col("p_csv").getField(CORRUPT), F.col("p_json").getField(CORRUPT))
    return df.select("*", corrupt.alias("corrupt"), *out)


_PARQUET_ROWS = ("path string, line long, text string, raw binary, kind string, "
                 "pq array<string>")


def _parquet_rows(loc: Location, columns: tuple[str, ...]) -> Iterator[pa.RecordBatch]:
    """The rows of one Parquet file as `_PARQUET_ROWS`: `line` the 1-based row number,
    `pq` the values of `columns` as text (vectorized casts, in pieces of
    `_PARQUET_BATCH_ROWS` rows), `text` those values joined by ',' for quarantine `raw`."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    url = loc.url
    k = len(columns)
    done = 0
    with loc.open("rb") as fh:
        for batch in pq.ParquetFile(fh).iter_batches(batch_size=_PARQUET_BATCH_ROWS,
                                                     columns=list(columns)):
            n = batch.num_rows
            parts = [pc.cast(batch.column(c), pa.string()) for c in columns]
            # Row-major interleave of the k columns: value j of row i at i * k + j.
            order = (np.arange(n)[:, None] + np.arange(k)[None, :] * n).ravel()
            flat = pa.concat_arrays(parts).take(pa.array(order))
            values = pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)), flat)
            shown = pa.ListArray.from_arrays(
                pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32)),
                pc.fill_null(flat, ""))
            text = pc.binary_join(shown, ",")
            yield pa.RecordBatch.from_arrays(
                [pa.array([url] * n, pa.string()),
                 pa.array(np.arange(done + 1, done + n + 1, dtype=np.int64)), text,
                 text.cast(pa.binary()), pa.array(["parquet"] * n, pa.string()), values],
                names=["path", "line", "text", "raw", "kind", "pq"])
            done += n


def _parquet_columns(files: Sequence[Location], fmt_of: Mapping[str, str],
                     schema: TransactionSchemaConfig) -> int:
    """Rows of the Parquet files (from their footers, on the driver: independent of the
    parse); CsvHeaderError when one lacks a column the schema maps."""
    import pyarrow.parquet as pq

    rows = 0
    for loc in files:
        if fmt_of[loc.url] != "parquet":
            continue
        with loc.open("rb") as fh:
            meta = pq.ParquetFile(fh)
            names = set(meta.schema_arrow.names)
            rows += meta.metadata.num_rows
        missing = [c for c in (schema.columns or schema.source_columns()) if c not in names]
        if missing:
            raise CsvHeaderError(f"{loc.url}: the Parquet file has no column "
                                 f"{', '.join(missing)} (inputs.transactions.schema)")
    return rows


def _malformed(cols: Sequence[str], schema: TransactionSchemaConfig) -> Column:
    """Why a line does not parse (null when it does)."""
    is_csv, is_ws = F.col("kind") == "csv", F.col("kind") == "whitespace"
    is_json = F.col("kind") == "jsonl"
    sep = schema.delimiter
    csv_fields = F.size(F.split(F.col("line_text"), re.escape(sep), -1))
    return F.when(F.col("bad_utf8"), "the line is not valid UTF-8").when(
        is_csv & F.col("odd_quotes"), "the CSV row has an unbalanced double quote"
    ).when(is_csv & F.col("corrupt").isNotNull(), F.concat(
        F.lit(f"the CSV row does not have the {len(cols)} columns "), F.lit(sep.join(cols)),
        _opt(~F.col("line_text").contains('"'),
             F.concat(F.lit(" (it has "), csv_fields.cast("string"), F.lit(")"))))
    ).when(is_ws & (F.size("tokens") != len(cols)), F.concat(
        F.lit(f"the line does not have the {len(cols)} whitespace-separated columns "
              f"{' '.join(cols)} (it has "), F.size("tokens").cast("string"), F.lit(")"))
    ).when(is_json & F.col("corrupt").isNotNull(), "the line is not a valid JSON object"
    ).when(is_json & ~F.coalesce(F.col("json_values") == 1, F.lit(False)),
           "the line is not exactly one strict JSON object (trailing content, NaN, "
           "single quotes or control characters)")


def _timestamp(text: Column, schema: TransactionSchemaConfig) -> tuple[Column, Column]:
    """(the UTC instant or null, why a non-null text is not one) for the declared format."""
    fmt = schema.timestamp_format
    if fmt == "iso":
        upper = F.upper(text)
        zoned = F.when(upper.rlike(_TS_ZONED_RE), upper.try_cast("timestamp"))
        if schema.timezone is None:
            why = (F.when(upper.rlike(_TS_NO_ZONE_RE), F.lit(" has no zone offset (Z or ±hh:mm)"))
                   .otherwise(F.lit(" is not an ISO-8601 date-time with a zone")))
            return zoned, why
        naive = F.when(upper.rlike(_TS_NO_ZONE_RE + "|" + r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"),
                       F.to_utc_timestamp(upper.try_cast("timestamp"), schema.timezone))
        return F.coalesce(zoned, naive), F.lit(" is not an ISO-8601 date-time")
    number = F.when(text.rlike(_NUMBER_RE), text.try_cast("decimal(38,6)"))
    if fmt == "epoch_s":
        return F.timestamp_seconds(number), F.lit(" is not a number of seconds since 1970")
    if fmt == "epoch_ms":
        return (F.timestamp_millis(number.cast("long")),
                F.lit(" is not a number of milliseconds since 1970"))
    if fmt == "seconds":
        origin = datetime.fromisoformat(str(schema.timestamp_origin).replace("Z", "+00:00"))
        if origin.tzinfo is None:
            origin = origin.replace(tzinfo=UTC)
        start = Decimal(int(origin.timestamp() * 1_000_000)) / Decimal(1_000_000)
        return (F.timestamp_seconds(F.lit(start) + number),
                F.lit(f" is not a number of seconds from {schema.timestamp_origin}"))
    parsed = F.try_to_timestamp(text, F.lit(strftime_to_spark(fmt)))
    if "%y" in fmt:  # strftime's pivot: 69-99 are 1969-1999, 00-68 are 2000-2068
        parsed = F.when(F.year(parsed) >= 2069, F.add_months(parsed, -1200).cast("timestamp")
                        + (parsed - F.date_trunc("day", parsed))).otherwise(parsed)
    if schema.timezone is not None:
        parsed = F.to_utc_timestamp(parsed, schema.timezone)
    return parsed, F.lit(f" does not match the format {fmt}")


def _checks(df: DataFrame, cfg: TransactionInputConfig, schema: TransactionSchemaConfig,
            cols: Sequence[str]) -> DataFrame:
    """Add `reason` and `detail` (null for good rows) and the converted values."""
    mapped = set(schema.mapped)
    null = F.lit(None).cast("string")
    f = {r: (F.col(f"f_{r}") if r in mapped else null) for r in ROLES}
    name = {r: str(schema.role_column(r)) for r in mapped}
    no = F.lit(False)
    if schema.currency is not None:
        cur = F.upper(f["currency"])
    elif schema.currency_constant is not None:
        cur = F.lit(schema.currency_constant.upper())
    else:
        cur = null
    card = F.regexp_replace(f["card"], "[ -]", "")
    amount = f["amount"].try_cast("decimal(38,10)")
    ts, ts_why = _timestamp(f["timestamp"], schema) if "timestamp" in mapped else (
        F.lit(None).cast("timestamp"), F.lit(""))
    fraud = F.lower(f["label"])
    malformed = _malformed(cols, schema)
    required = schema.required_roles
    missing = F.concat_ws(", ", *[F.when(f[r].isNull(), F.lit(name[r])) for r in required])
    frac = F.regexp_replace(F.regexp_extract(f["amount"], r"\.([0-9]*)$", 1), "0+$", "")
    minor = (F.when(cur.isin(*codes_with_minor_unit(0)), 0)
             .when(cur.isin(*codes_with_minor_unit(3)), 3)
             .when(cur.isin(*codes_with_minor_unit(4)), 4).otherwise(2))
    known = cur.isin(*sorted(ISO_4217))
    allowed = F.when(F.coalesce(known, no), F.least(minor, F.lit(2))).otherwise(2)
    upper = min(Decimal(repr(cfg.max_amount)), _DECIMAL_MAX)
    if cfg.min_amount is None:
        low_bad, interval = amount <= 0, f"(0, {upper}]"
    else:
        lower = max(Decimal(repr(cfg.min_amount)), -_DECIMAL_MAX)
        low_bad, interval = amount < lower, f"[{lower}, {upper}]"
    card_shape = card.rlike(r"^[0-9]{12,19}$")

    def given(role: str) -> Column:
        return f[role].isNotNull() if role in mapped else no

    bad_field: Column = null
    numeric = list(schema.feature_columns().values())[:len(schema.features.numeric)]
    for i, column in reversed(list(enumerate(numeric))):
        value = F.col(f"f_feature{i}")
        bad_field = F.when(value.isNotNull() & value.try_cast("double").isNull(), F.concat(
            F.lit(f"{column} "), _shown(value), F.lit(" is not a number"))).otherwise(bad_field)
    if "country" in mapped:
        bad_field = F.when(given("country") & ~f["country"].rlike(r"^[A-Za-z]{2}$"), F.concat(
            F.lit(f"{name['country']} "), _shown(f["country"]),
            F.lit(" is not a 2-letter country code"))).otherwise(bad_field)
    if "label" in mapped:
        bad_field = F.when(given("label") & ~fraud.isin("0", "1", "true", "false"), F.concat(
            F.lit(f"{name['label']} "), _shown(f["label"]),
            F.lit(" is not one of 0, 1, true, false"))).otherwise(bad_field)
    if "mcc" in mapped:
        bad_field = F.when(given("mcc") & ~f["mcc"].rlike(r"^[0-9]{4}$"), F.concat(
            F.lit(f"{name['mcc']} "), _shown(f["mcc"]), F.lit(" is not 4 digits"))
        ).otherwise(bad_field)
    checks: list[tuple[str, Column, Column]] = [
        ("MALFORMED_ROW", malformed.isNotNull(), malformed)]
    if required:
        checks.append(("MISSING_FIELD", missing != "", F.concat(
            F.lit("required field(s) absent or empty: "), missing)))
    if "amount" in mapped:
        a = name["amount"]
        checks += [
            ("BAD_AMOUNT", given("amount") & ~f["amount"].rlike(_AMOUNT_RE), F.concat(
                F.lit(f"{a} "), _shown(f["amount"]), F.lit(" is not a decimal number"))),
            ("BAD_AMOUNT", given("amount") & (F.length(frac) > allowed), F.concat(
                F.lit(f"{a} "), _shown(f["amount"]), F.lit(" has "),
                F.length(frac).cast("string"), F.lit(" significant decimal places; "),
                F.coalesce(cur, F.lit("an amount without currency")), F.lit(" allows "),
                allowed.cast("string"),
                _opt(minor > 2, F.lit(" in the decimal(18,2) amount")))),
            ("AMOUNT_OUT_OF_RANGE", given("amount") & (
                F.coalesce(low_bad, F.lit(True)) | (amount > upper)),
             F.concat(F.lit(f"{a} "), _shown(f["amount"]),
                      F.lit(f" is outside {interval} (inputs.transactions."
                            f"{'max_amount' if cfg.min_amount is None else 'min/max_amount'})"
                            )))]
    if "timestamp" in mapped:
        checks.append(("BAD_TIMESTAMP", given("timestamp") & ts.isNull(), F.concat(
            F.lit(f"{name['timestamp']} "), _shown(f["timestamp"]), ts_why)))
    if "currency" in mapped:
        checks.append(("UNKNOWN_CURRENCY", given("currency") & ~known, F.concat(
            F.lit(f"{name['currency']} "), _shown(f["currency"]),
            F.lit(" is not an ISO 4217 code"))))
    if "card" in mapped:
        c = name["card"]
        # Never the number itself: only its length and what is wrong with it.
        checks += [
            ("BAD_CARD", given("card") & ~card_shape, F.concat(
                F.lit(f"{c} is not 12-19 digits: "), F.length(card).cast("string"),
                F.lit(" characters after removing spaces and dashes"),
                _opt(card.rlike("[^0-9]"), F.lit(", some not digits")))),
            ("BAD_CARD", given("card") & ~luhn_valid(card), F.concat(
                F.lit(f"{c} ("), F.length(card).cast("string"),
                F.lit(" digits) fails the Luhn check")))]
    checks.append(("BAD_FIELD", bad_field.isNotNull(), bad_field))
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, failed, sentence in reversed(checks):  # the first listed check wins
        reason = F.when(F.coalesce(failed, F.lit(True)), F.lit(code)).otherwise(reason)
        detail = F.when(F.coalesce(failed, F.lit(True)), sentence).otherwise(detail)
    label = (F.when(fraud.isNotNull(), fraud.isin("1", "true")) if "label" in mapped
             else F.lit(None).cast("boolean"))
    return df.select("*", reason.alias("reason"), detail.alias("detail"),
                     amount.alias("amount_dec"), ts.alias("ts"), cur.alias("cur"),
                     card.alias("card_digits"), label.alias("fraud"))


def _curated(df: DataFrame, key: bytes, schema: TransactionSchemaConfig,
             roots: Sequence[str]) -> DataFrame:
    keyed = with_hmac_key(df.filter(F.col("reason").isNull()), key)
    ipad, opad = F.col("_ipad"), F.col("_opad")
    mapped = set(schema.mapped)
    null = F.lit(None).cast("string")

    def token(prefix: str, value: Column) -> Column:
        return F.substring(hmac_sha256_hex(F.concat(F.lit(prefix), value), ipad, opad), 1,
                           TOKEN_HEX_CHARS)

    def role(r: str, value: Column | None = None) -> Column:
        if r not in mapped:
            return null
        v = value if value is not None else F.col(f"f_{r}")
        column = schema.role_column(r)
        return token(f"{column}:", v) if column in schema.pii else v

    if schema.id is not None:
        txn_id = role("id")
    else:  # stable from file and line, wherever the input folder lives
        txn_id = stable_id(relative_key(F.col("path"), roots), F.col("line"))
    features = schema.feature_columns()
    n_numeric = len(schema.features.numeric)
    feature_cols = []
    for i, (curated_name, column) in enumerate(features.items()):
        v = F.col(f"f_feature{i}")
        if i < n_numeric:
            feature_cols.append(v.try_cast("double").alias(curated_name))
        else:
            v = token(f"{column}:", v) if column in schema.pii else v
            feature_cols.append(v.alias(curated_name))
    out = keyed.select(
        txn_id.alias("txn_id"),
        (token("account:", F.col("f_account")) if "account" in mapped else null
         ).alias("account_token"),
        (token("card:", F.col("card_digits")) if "card" in mapped else null
         ).alias("card_token"),
        F.col("amount_dec").cast("decimal(18,2)").alias("amount"),
        F.col("cur").cast("string").alias("currency"),
        F.col("ts").cast("timestamp").alias("ts"),
        role("merchant").alias("merchant"),
        role("mcc").alias("mcc"),
        (F.upper(F.col("f_country")) if "country" in mapped else null).alias("country"),
        F.col("fraud").alias("is_fraud"),
        *feature_cols,
        source_with_line(F.col("path"), F.col("line")).alias("source"),
    )
    # Without a given id, exact copies must share the hash: the made-up id stays out.
    ids = ("txn_id", "account_token", "card_token") if schema.id is not None else (
        "account_token", "card_token")
    canonical = F.to_json(F.struct(
        *[F.col(c) for c in ids],
        F.col("amount").cast("string").alias("amount"), F.col("currency"),
        F.unix_micros(F.col("ts")).cast("string").alias("ts_us"),
        *[F.col(c) for c in ("merchant", "mcc", "country")],
        F.col("is_fraud").cast("string").alias("is_fraud"),
        *[F.col(c).cast("string").alias(c) for c in features]))
    return out.withColumn("content_hash", F.sha2(canonical, 256))


def curated_ddl(schema: TransactionSchemaConfig) -> str:
    """The curated schema of a declared transaction schema (`CURATED_DDL` + features)."""
    n_numeric = len(schema.features.numeric)
    extra = [f"`{name}` {'double' if i < n_numeric else 'string'}"
             for i, name in enumerate(schema.feature_columns())]
    head, tail = CURATED_DDL.split(", source string")
    return ", ".join([head, *extra]) + ", source string" + tail


def input_extensions(schema: TransactionSchemaConfig) -> tuple[str, ...]:
    """The file name endings a schema parses (of `ALL_EXTENSIONS`)."""
    if schema.format == "auto":
        return (".csv", ".jsonl", ".json")
    if schema.format == "jsonl":
        return (".jsonl", ".json", ".ndjson")
    if schema.format == "parquet":
        return (".parquet",)
    return (".csv", ".tsv", ".txt", ".dat", ".asc")


def _unsupported(spark: SparkSession, files: Sequence[Location],
                 schema: TransactionSchemaConfig) -> DataFrame:
    """One UNSUPPORTED_FILE quarantine row per listed file this schema does not parse."""
    from pipeline.ingest.common import QUARANTINE_SCHEMA

    rows = [(STAGE, loc.url, "UNSUPPORTED_FILE",
             f"{posixpath.basename(loc.path)!r} is not read by the {schema.format} "
             f"transaction format ({', '.join(input_extensions(schema))})", None)
            for loc in files]
    return spark.createDataFrame(rows, QUARANTINE_SCHEMA)


def ingest_transactions(spark: SparkSession, cfg: TransactionInputConfig,
                        inputs: Sequence[Location], hmac_key: bytes) -> IngestResult:
    """Read the files under `inputs` (files or folders, recursive) as the declared table
    (`cfg.table_schema`) into curated transactions (`curated_ddl`) and quarantine rows; see
    the module docstring for the checks, their order and the token/hash definitions.
    `n_input` is counted from the files independently. Raises CsvHeaderError when a header
    does not fit the schema."""
    hmac_pads(hmac_key)  # fail early on an empty key
    schema = cfg.table_schema
    include, exclude = getattr(cfg, "include", ()), getattr(cfg, "exclude", ())
    # The line formats are also read compressed (.gz/.bz2/.zst): read_lines decompresses;
    # the same list as the spec's compressed_extensions (pipeline.modalities.transactions).
    listed = list_input_files(inputs, ALL_EXTENSIONS, include, exclude,
                              compressed=[e for e in ALL_EXTENSIONS if e != ".parquet"])
    parsed = input_extensions(schema)
    files = [loc for loc in listed if base_name(loc.path).endswith(parsed)]
    other = [loc for loc in listed if not base_name(loc.path).endswith(parsed)]
    fmt_of = {loc.url: file_format(loc.url, schema) for loc in files}
    headers, cols = _csv_headers(files, schema, fmt_of)
    parquet_rows = _parquet_columns(files, fmt_of, schema)
    log.info("transactions: %d files (%s)", len(files), ", ".join(
        f"{n} {k}" for k, n in sorted(Counter(fmt_of.values()).items())) or "none")
    checked = _checks(_parse(spark, files, headers, fmt_of, cols, schema), cfg, schema, cols)
    bad = checked.filter(F.col("reason").isNotNull())
    quarantine = quarantine_rows(bad, STAGE, source_with_line(F.col("path"), F.col("line")),
                                 F.col("reason"), F.col("detail"), _masked_raw(schema))
    if other:  # listed for this modality, but not in the declared format
        quarantine = quarantine.unionByName(_unsupported(spark, other, schema))
    curated = _curated(checked, hmac_key, schema, input_roots(inputs))
    text_files = [f for f in files if fmt_of[f.url] != "parquet"]
    n_input = (_count_records(spark, text_files, len(headers)) + parquet_rows + len(other))
    return IngestResult(curated=curated, quarantine=quarantine, shared=checked,
                        n_input=n_input)
