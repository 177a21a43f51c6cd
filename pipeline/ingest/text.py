"""Text ingest: JSONL shards and loose .txt documents -> curated text + quarantine.

A JSONL line (or a whole .txt file) is one record. Each record ends up in exactly one of
the two outputs; the checks run in this order and the first that fails names the reason:

- INVALID_UTF8: the bytes are not strict UTF-8 (decoded in `pipeline.ingest.lines`);
- MALFORMED_JSON: the line is not exactly one JSON object;
- MISSING_FIELD: the object has no `cfg.text_field`, or it is null or not a string;
- EMPTY_TEXT / TOO_LONG: the normalized text has fewer than `cfg.min_chars` or more than
  `cfg.max_chars` characters.

Parsing is one strict parser, Spark's `parse_json` (VARIANT), through
`pipeline.ingest.common.one_json_value`: a line is accepted only when it is exactly one
JSON value and that value is an object. Content after the object (`{"text": "x"} xyz`,
`{"text": "x"}, "z": 1`, `{"text": "x"}] xyz`, a second object), duplicate keys,
NaN/Infinity, single quotes, raw control characters, lone surrogates, numbers over 1000
digits and nesting deeper than 1000 levels are all MALFORMED_JSON. (Spark's JSON parsers
ignore whatever follows the first value, so a wrapper around the line must be
unforgeable: an earlier `{"v": <line>, "e": ...}` wrapper let trailing members such as
`, "v": {...}` replace the record.) The fields come from casting the object to a struct;
the text field stays a VARIANT so that its JSON type is known: `{"text": 5}` must not pass
as the string "5". Id and label are cast to strings (a number as its JSON text).

Normalization (`pipeline.textnorm.normalize_text`: NFC, control characters removed,
whitespace collapsed) needs Unicode NFC, which Spark lacks; it runs as a vectorized Arrow
UDF over pyarrow.compute kernels, equal to the Python definition code point for code point.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import TextInputConfig
from pipeline.ingest.common import (
    RAW_MAX_CHARS,
    IngestResult,
    one_json_value,
    quarantine_rows,
    source_with_line,
)
from pipeline.ingest.lines import (
    count_nonblank_lines,
    input_roots,
    list_input_files,
    read_lines,
    relative_key,
    stable_id,
    whole_text_files,
)
from pipeline.ingest.listing import base_name
from pipeline.ingest.tables import COMPRESSIBLE_TABLES, TABLE_EXTENSIONS, table_records
from pipeline.storage import Location

JSONL_EXTENSIONS = (".jsonl", ".ndjson", ".json")
TXT_EXTENSIONS = (".txt",)
#: every extension text ingest reads, and those it also reads compressed (.gz/.bz2/.zst)
EXTENSIONS = JSONL_EXTENSIONS + TXT_EXTENSIONS + TABLE_EXTENSIONS
COMPRESSIBLE = JSONL_EXTENSIONS + TXT_EXTENSIONS + COMPRESSIBLE_TABLES

# Column names and types of the curated table (dedup adds minhash_cluster later).
CURATED_COLUMNS: tuple[tuple[str, T.DataType], ...] = (
    ("doc_id", T.StringType()),
    ("source", T.StringType()),
    ("text", T.StringType()),
    ("n_chars", T.IntegerType()),
    ("content_hash", T.StringType()),
    ("label", T.StringType()),  # null for .txt documents
    ("raw_id", T.StringType()),  # cfg.id_field as a string; null when absent and for .txt
)


def _char_class(code_points: Sequence[int]) -> str:
    """An RE2 character class for `code_points`, written as ranges of \\x{...} escapes."""
    out: list[str] = []
    cps = sorted(code_points)
    i = 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        out.append(f"\\x{{{cps[i]:x}}}" + (f"-\\x{{{cps[j]:x}}}" if j > i else ""))
        i = j + 1
    return "[" + "".join(out) + "]"


# The same classes as `pipeline.textnorm`: its control set, and Python's `\s` (exactly the
# code points whose str.isspace() is true; RE2's `\s` is ASCII only, so it is spelled out).
_CONTROL_RE2 = _char_class([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20),
                            *range(0x7F, 0xA0), 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF])
_WHITESPACE_RE2 = _char_class([c for c in range(sys.maxunicode + 1) if chr(c).isspace()]) + "+"

# Enough of a raw line to show, plus room for a card number cut at the end to stay whole
# until `quarantine_rows` has masked it and truncated to RAW_MAX_CHARS.
_RAW_PREFIX = RAW_MAX_CHARS + 64


def normalize_arrow(values: pa.Array) -> pa.Array:
    """`pipeline.textnorm.normalize_text` over an Arrow string array, nulls kept.

    Same order as the Python definition: removal of control characters, then NFC, then
    whitespace runs -> one space, then the outer spaces stripped."""
    out = pc.replace_substring_regex(values, _CONTROL_RE2, "")
    out = pc.utf8_normalize(out, "NFC")
    out = pc.replace_substring_regex(out, _WHITESPACE_RE2, " ")
    return pc.utf8_trim(out, " ")


def _fields_type(cfg: TextInputConfig) -> str:
    """The struct type (DDL, names quoted) the line's object is cast to: the text field as
    a VARIANT (its JSON type is checked), id and label as strings."""
    fields = {cfg.text_field: "variant"}
    for name in (cfg.id_field, cfg.label_field):
        fields.setdefault(name, "string")
    quoted = ("`" + name.replace("`", "``") + "`" for name in fields)
    return "struct<" + ", ".join(f"{q}: {t}" for q, t in zip(quoted, fields.values(),
                                                             strict=True)) + ">"


def _as_string(obj: Column, name: str, text_field: str) -> Column:
    value = obj.getField(name)
    return F.try_variant_get(value, "$", "string") if name == text_field else value


def _jsonl_records(spark: SparkSession, cfg: TextInputConfig,
                   files: Sequence[Location]) -> DataFrame:
    """One row per non-blank JSONL line: path, line, raw, text (not yet normalized), label,
    raw_id, reason and detail (null when the line passed the JSON checks)."""
    # A byte-order mark (often several, when BOM files were concatenated) starts a line but
    # is not JSON; strict UTF-8 decoding has already kept it as U+FEFF.
    lines = read_lines(spark, files, cfg.encoding).select(
        "path", "line", "raw", "encoding", "error", F.col("text").alias("line_text"),
        F.regexp_replace(F.col("text"), "^\ufeff+", "").alias("clean"))
    # The line's one JSON value (null when it is not exactly one strict value).
    parsed = lines.select("path", "line", "raw", "line_text", "encoding", "error",
                          one_json_value(F.col("clean")).alias("value"))
    parsed = parsed.select(
        "*", F.schema_of_variant(F.col("value")).alias("value_kind"),
        F.try_variant_get(F.col("value"), "$", _fields_type(cfg)).alias("obj"))
    value_kind = F.col("value_kind")
    obj = F.col("obj")
    field = obj.getField(cfg.text_field)
    kind = F.schema_of_variant(field)
    one_value = F.col("value").isNotNull()
    malformed = ~one_value | ~value_kind.startswith("OBJECT") | obj.isNull()
    tf = cfg.text_field
    reason = (F.when(F.col("line_text").isNull(), F.lit("INVALID_UTF8"))
              .when(malformed, F.lit("MALFORMED_JSON"))
              .when(F.coalesce(kind != F.lit("STRING"), F.lit(True)), F.lit("MISSING_FIELD")))
    detail = (F.when(F.col("line_text").isNull(),
                     F.lit("the line is not valid UTF-8 (strict decoding)"))
              .when(one_value & (value_kind == F.lit("VOID")),
                    F.lit("the line is JSON null, not an object"))
              .when(one_value & ~value_kind.startswith("OBJECT"),
                    F.concat(F.lit("the line is a JSON "), F.substring(value_kind, 1, 80),
                             F.lit(", not an object")))
              .when(malformed, F.lit("the line is not exactly one strict JSON object: it does "
                                     "not parse, has content after the object, or has "
                                     "duplicate keys, NaN/Infinity, single quotes, raw control "
                                     "characters, a lone surrogate, a number over 1000 digits "
                                     "or nesting over 1000 levels"))
              .when(kind.isNull(), F.lit(f"the object has no '{tf}' field"))
              .when(kind == F.lit("VOID"), F.lit(f"the '{tf}' field is null"))
              .when(kind != F.lit("STRING"),
                    F.concat(F.lit(f"the '{tf}' field is "), F.substring(kind, 1, 80),
                             F.lit(", not a string"))))
    return parsed.select(
        "path", "line", "raw", "line_text",
        F.when(reason.isNull(), F.try_variant_get(field, "$", "string")).alias("text"),
        _as_string(obj, cfg.label_field, tf).cast("string").alias("label"),
        _as_string(obj, cfg.id_field, tf).cast("string").alias("raw_id"),
        reason.alias("reason"), detail.alias("detail"), "encoding", "error",
    )


_RECORD_COLUMNS = ("path", "line", "raw", "line_text", "text", "label", "raw_id", "reason",
                   "detail", "encoding", "error")


def _txt_records(spark: SparkSession, files: Sequence[Location], encoding: str) -> DataFrame:
    """One row per .txt file, in the same shape as `_jsonl_records`."""
    invalid = F.col("text").isNull()
    return whole_text_files(spark, files, encoding).select(
        "path", "line", "raw", F.col("text").alias("line_text"), "text",
        F.lit(None).cast("string").alias("label"), F.lit(None).cast("string").alias("raw_id"),
        F.when(invalid, F.lit("INVALID_UTF8")).alias("reason"),
        F.when(invalid, F.lit("the file is not valid UTF-8 (strict decoding)")).alias("detail"),
        "encoding", "error",
    )


def _problems_of_reading(records: DataFrame) -> DataFrame:
    """`reason`/`detail` of what reading found: a file that broke off (UNREADABLE_FILE),
    and bytes not valid in a declared or detected encoding other than UTF-8
    (INVALID_ENCODING: INVALID_UTF8 names only UTF-8)."""
    error = F.col("error").isNotNull()
    other = F.col("reason").isin("INVALID_UTF8") & (F.col("encoding") != F.lit("utf-8"))
    reason = (F.when(error, F.lit("UNREADABLE_FILE"))
              .when(other, F.lit("INVALID_ENCODING")).otherwise(F.col("reason")))
    detail = (F.when(error, F.concat(F.lit("the file cannot be read past this point: "),
                                     F.col("error")))
              .when(other, F.concat(F.lit("the bytes do not decode as "), F.col("encoding"),
                                    F.lit(" (strict decoding)")))
              .otherwise(F.col("detail")))
    return records.withColumns({"reason": reason, "detail": detail})


def ingest_text(spark: SparkSession, cfg: TextInputConfig,
                inputs: Sequence[Location]) -> IngestResult:
    """Read JSONL (`.jsonl`, `.json`: one record per non-blank line) and `.txt` files (one
    record each) under `inputs` (files or folders, searched recursively) into curated text
    rows (`CURATED_COLUMNS`) and quarantine rows; see the module docstring for the checks.

    `doc_id` is the first 16 hex digits of SHA-256 over `<i>/<path relative to input i>` and,
    for JSONL, `:<line>`; `content_hash` is the hex SHA-256 of the normalized text's UTF-8
    bytes (`pipeline.textnorm.content_hash`). `n_input` is counted apart from the parse:
    non-blank JSONL lines counted in the JVM (`count_nonblank_lines`) plus the number of
    .txt files listed. `source` is the file URL (`file:///x/a.jsonl`), plus `:<line>`."""
    files = list_input_files(inputs, EXTENSIONS, cfg.include, cfg.exclude, COMPRESSIBLE)
    jsonl = [f for f in files if base_name(f.name).endswith(JSONL_EXTENSIONS)]
    txt = [f for f in files if base_name(f.name).endswith(TXT_EXTENSIONS)]
    tables = [f for f in files if base_name(f.name).endswith(TABLE_EXTENSIONS)]
    table_rows = table_records(spark, tables, cfg.text_field, cfg.id_field, cfg.label_field,
                               cfg.encoding)
    # Table rows are counted by their reader (a CSV record may span lines).
    n_input = (count_nonblank_lines(spark, jsonl, cfg.encoding) + len(txt)
               + (table_rows.count() if tables else 0))

    records = _problems_of_reading(
        _jsonl_records(spark, cfg, jsonl).unionByName(_txt_records(spark, txt, cfg.encoding))
        .unionByName(table_rows.select(*_RECORD_COLUMNS)))
    # Scalar Arrow UDF, from the type hints (the stubs insist on a functionType).
    normalize = F.arrow_udf(normalize_arrow, T.StringType())  # type: ignore[call-overload]
    uri = F.col("path")  # the file URL, as list_input_files spells it
    rows = records.select(
        F.when(F.col("line").isNull(), uri).otherwise(source_with_line(uri, F.col("line")))
        .alias("source"),
        stable_id(relative_key(uri, input_roots(inputs)), F.col("line")).alias("doc_id"),
        "raw", "line_text", "label", "raw_id", "reason", "detail", "path", "encoding",
        normalize(F.col("text")).alias("text"),
    ).withColumn("n_chars", F.length("text").cast("int"))

    n = F.col("n_chars")
    reason = F.coalesce(F.col("reason"),
                        F.when(n < cfg.min_chars, F.lit("EMPTY_TEXT"))
                        .when(n > cfg.max_chars, F.lit("TOO_LONG")))
    detail = F.coalesce(
        F.col("detail"),
        F.when(n < cfg.min_chars, F.format_string(
            f"the text has %d characters after normalization, fewer than min_chars="
            f"{cfg.min_chars}", n))
        .when(n > cfg.max_chars, F.format_string(
            f"the text has %d characters after normalization, more than max_chars="
            f"{cfg.max_chars}", n)))
    rows = rows.withColumn("reason", reason).withColumn("detail", detail)

    curated = rows.filter(F.col("reason").isNull()).select(
        "doc_id", "source", "text", "n_chars",
        F.sha2(F.col("text"), 256).alias("content_hash"), "label", "raw_id")
    # Invalid UTF-8 is shown with U+FFFD in place of the bad bytes, never as broken bytes.
    raw = F.when(F.col("line_text").isNull(),
                 F.make_valid_utf8(F.substring(F.col("raw"), 1, 4 * _RAW_PREFIX).cast("string")))
    raw = F.substring(raw.otherwise(F.col("line_text")), 1, _RAW_PREFIX)
    quarantine = quarantine_rows(rows.filter(F.col("reason").isNotNull()), stage="ingest",
                                 source=F.col("source"), reason=F.col("reason"),
                                 detail=F.col("detail"), raw=raw)
    return IngestResult(curated=curated, quarantine=quarantine, n_input=n_input, shared=rows,
                        figures=lambda: {"encodings": file_encodings(rows)})


def file_encodings(rows: DataFrame) -> dict[str, int]:
    """Files read per encoding ('utf-8', a declared or detected codec, 'parquet')."""
    counts = rows.groupBy("encoding").agg(F.countDistinct("path").alias("n")).collect()
    return {str(r["encoding"]): int(r["n"]) for r in sorted(counts, key=lambda r: r[0] or "")}
