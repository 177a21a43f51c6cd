"""Transaction ingest: CSV and JSONL card transactions -> curated rows + quarantine.

Every non-blank line of every input file (less each CSV file's header) is one record and
ends up either curated or quarantined with exactly one reason: the FIRST failing check in
`REASON_ORDER`. Everything is Spark built-in functions (no Python UDF):

1. MALFORMED_ROW: not valid UTF-8; CSV with the wrong column count or an unbalanced quote;
   JSON that is not exactly one strict JSON object (trailing content, NaN, single quotes).
2. MISSING_FIELD: any of the ten fields absent, null or blank.
3. BAD_AMOUNT: not a plain decimal number ("12,50€", "1e3", "abc"), or more significant
   decimals than the currency's minor unit (JPY 0, USD 2), capped at the 2 the curated
   decimal(18,2) holds (so 3-decimal BHD amounts like "1.234" are BAD_AMOUNT too).
4. AMOUNT_OUT_OF_RANGE: amount <= 0 or > inputs.transactions.max_amount.
5. BAD_TIMESTAMP: not ISO-8601 `YYYY-MM-DD[T ]hh:mm:ss[.f]` with `Z` or `±hh[[:]mm]`; no zone.
6. UNKNOWN_CURRENCY: not an ISO 4217 code (case-insensitive; curated upper-case).
7. BAD_CARD: after removing spaces and dashes, not 12-19 digits passing the Luhn check.
8. BAD_FIELD: mcc not 4 digits, is_fraud not 0/1/true/false, country not 2 letters.

Curated schema (`CURATED_DDL`): `is_fraud` is a boolean; `amount` decimal(18,2); `ts` the
UTC instant. `card_token`/`account_token` are the first 32 hex chars (128 bits) of
HMAC-SHA256(key, "card:" + digits) / HMAC-SHA256(key, "account:" + account); the prefixes
keep a card and an account with equal digits from sharing a token. `content_hash` is the
SHA-256 of the JSON of ALL normalized curated fields (txn_id and ts included, tokens rather
than numbers, ts as epoch microseconds, `source` excluded), so exact duplicate rows share a
hash and replays (same txn_id, later ts) do not.

Formats: a CSV file's first non-blank line must name `COLUMNS` in order (case and quotes
aside), or CsvHeaderError; RFC 4180 quoting, but a record is one line (a quoted newline
makes two MALFORMED_ROW lines). `.json` files are JSON Lines too; extra JSON keys are
ignored; a JSON number amount is taken exactly (through the variant, never a double).

No raw card number reaches any output: tokens replace them, details never quote the card
or account, and quarantine `raw` has the parsed card/account values replaced literally
(whatever their format) before `mask_cards` masks anything card-shaped that is left.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Sequence
from decimal import Decimal

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.config import TransactionInputConfig, env_secret
from pipeline.ingest.common import (
    CARD_MASK,
    IngestResult,
    mask_cards,
    mask_cards_py,
    quarantine_rows,
    source_with_line,
)
from pipeline.ingest.currencies import ISO_4217, codes_with_minor_unit
from pipeline.ingest.lines import count_nonblank_lines, list_input_files, read_lines
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
TOKEN_HEX_CHARS = 32
# Used only for generated sample data (`pipeline synth`) when the key variable is unset or
# empty; it is public, so tokens made with it are not secret.
DEV_HMAC_KEY = b"pipeline-local-development-hmac-key-NOT-SECRET"
# A shorter key is a placeholder or a typo, not a secret (HMAC-SHA256 wants 32 random bytes).
MIN_HMAC_KEY_BYTES = 16
_BLOCK = 64  # SHA-256 block size in bytes
_DECIMAL_MAX = Decimal("9999999999999999.99")  # the largest decimal(18,2)
_ACCOUNT_MASK = "[ACCOUNT]"
_CSV_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, "escape": '"'}
_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT}
_AMOUNT_RE = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)$"
_DATE_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
_TS_ZONED_RE = _DATE_TIME + r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"
_TS_NO_ZONE_RE = _DATE_TIME + "$"


class CsvHeaderError(ValueError):
    """A CSV file whose header does not name the expected columns in the expected order."""


def uses_sample_data(cfg: TransactionInputConfig) -> bool:
    """True when the transactions come from the synth stage (`pipeline synth`): no
    `inputs.transactions.paths` configured, so ingest reads the generated sample data."""
    return not cfg.paths


def resolve_hmac_key(cfg: TransactionInputConfig, sample_data: bool) -> bytes:
    """The HMAC key: the UTF-8 bytes of the variable named by `cfg.hmac_key_env`.

    An unset or empty (or blank) variable gets the public `DEV_HMAC_KEY` only for generated
    sample data (`sample_data`, see `uses_sample_data`), with a warning; for any configured
    input it raises, naming the variable, whatever the Spark master: a real card number
    tokenized with a public key is brute-forced in minutes. A key shorter than
    `MIN_HMAC_KEY_BYTES` (a placeholder such as REPLACE_ME) is refused too. The key itself
    is never logged."""
    var = cfg.hmac_key_env
    value = env_secret(var)
    if value is not None and value.strip():
        key = value.encode("utf-8")
        if len(key) < MIN_HMAC_KEY_BYTES:
            raise RuntimeError(
                f"environment variable {var} holds a {len(key)}-byte HMAC key; card/account "
                f"tokens need a secret of at least {MIN_HMAC_KEY_BYTES} bytes (e.g. "
                "`openssl rand -hex 32`; inputs.transactions.hmac_key_env)")
        return key
    if sample_data:
        log.warning("environment variable %s is not set: using the public development HMAC "
                    "key for the generated sample data; card and account tokens are NOT "
                    "secret (set %s for real data)", var, var)
        return DEV_HMAC_KEY
    raise RuntimeError(
        f"environment variable {var} is not set (or empty); it must hold the secret key for "
        "card/account tokens when inputs.transactions.paths names real data (the public "
        "development key is used only for `pipeline synth` sample data; "
        "inputs.transactions.hmac_key_env)")


def hmac_key_id(key: bytes) -> str:
    """A non-secret fingerprint of the HMAC key: tokens change when the key does, so the key
    must be part of the cache key; this id is safe to store, the key is not."""
    return hmac.new(key, b"pipeline/hmac-key-id", hashlib.sha256).hexdigest()[:12]


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """(K xor ipad, K xor opad) for HMAC-SHA256 (RFC 2104, 64-byte block)."""
    if not key:
        raise ValueError("the HMAC key is empty")
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def with_hmac_key(df: DataFrame, key: bytes) -> DataFrame:
    """`df` plus binary columns `_ipad`, `_opad` for `hmac_sha256_hex`.

    The pads arrive through a broadcast one-row join, not as literals: a literal would be
    printed in query plans, the Spark UI and event logs, and K xor 0x36 gives K back."""
    ipad, opad = hmac_pads(key)
    pads = df.sparkSession.createDataFrame([(bytearray(ipad), bytearray(opad))],
                                           "_ipad binary, _opad binary")
    return df.crossJoin(F.broadcast(pads))


def hmac_sha256_hex(message: Column, ipad: Column, opad: Column) -> Column:
    """HMAC-SHA256(K, message) in hex: H((K^opad) || H((K^ipad) || message))."""
    inner = F.unhex(F.sha2(F.concat(ipad, message.cast("binary")), 256))
    return F.sha2(F.concat(opad, inner), 256)


def luhn_valid(digits: Column) -> Column:
    """True when the all-digit string `digits` passes the Luhn check (higher-order functions
    over its reversed digit array: every second digit doubled, minus 9 above 9)."""
    values = F.transform(F.split(F.reverse(digits), ""), lambda c, i: F.when(
        i % 2 == 1, F.when(F.ascii(c) * 2 - 96 > 9, F.ascii(c) * 2 - 105)
        .otherwise(F.ascii(c) * 2 - 96)).otherwise(F.ascii(c) - 48))
    return F.aggregate(values, F.lit(0), lambda acc, x: acc + x) % 10 == 0


def _csv_headers(files: Sequence[Location]) -> dict[str, int]:
    """URL -> line number of each CSV file's header (its first non-blank line), read on the
    driver (only the first line of each file); raises CsvHeaderError on a wrong header."""
    headers: dict[str, int] = {}
    for loc in files:
        url = loc.url
        with loc.open("rb") as fh:
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
        names = tuple(n.strip().strip('"').strip().lower() for n in text.split(","))
        if names != COLUMNS:
            raise CsvHeaderError(
                f"{url}: line {number}: the CSV header must be {','.join(COLUMNS)!r}, found "
                f"{mask_cards_py(text)[:300]!r}")
        headers[url] = number
    return headers


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


def _masked_raw() -> Column:
    """The line for quarantine `raw`, card and account values masked (mask_cards and the
    truncation follow in quarantine_rows)."""
    raw = _mask_literal(F.col("line_text"), F.col("f_card_number"), CARD_MASK)
    raw = _mask_literal(raw, F.col("f_account"), _ACCOUNT_MASK)
    # A broken JSON line parses to all-null fields, so mask its keyed values by pattern.
    for key, mask in (("card_number", CARD_MASK), ("account", _ACCOUNT_MASK)):
        raw = F.regexp_replace(raw, rf'("{key}"\s*:\s*)("[^"]*"?|[0-9][0-9 .-]*)',
                               f'$1"{mask}"')
    return raw


def _parse(spark: SparkSession, files: Sequence[Location],
           headers: dict[str, int]) -> DataFrame:
    """One row per record: lineage, the raw line, and the ten fields as cleaned strings."""
    lines = read_lines(spark, files)
    path = F.col("path")  # the file URL (file:///x), as list_input_files spells it
    is_csv = F.lower(F.col("path")).endswith(".csv")
    lines = lines.select(path.alias("path"), "line", "text", "raw", is_csv.alias("is_csv"))
    if headers:
        header_line = F.try_element_at(
            F.create_map(*[F.lit(x) for kv in sorted(headers.items()) for x in kv]),
            F.col("path"))
        lines = lines.filter(~(F.col("is_csv") & F.coalesce(header_line == F.col("line"),
                                                            F.lit(False))))
    # Lenient decoding only feeds the masked `raw` and the field masking; a line that is
    # not strict UTF-8 is MALFORMED_ROW whatever it parses to.
    line = F.coalesce(F.col("text"), F.make_valid_utf8(F.col("raw").cast("string")))
    line = F.regexp_replace(line, "^\ufeff", "")
    parsed = F.when(F.col("is_csv"), F.from_csv(line, RAW_SCHEMA, _CSV_OPTIONS)).otherwise(
        F.from_json(line, RAW_SCHEMA, _JSON_OPTIONS))
    # Spark's JSON reader ignores content after the first object and accepts NaN and
    # single quotes; wrapped in [...], strict variant parsing must find exactly one value.
    wrapped = F.when(~F.col("is_csv"), F.try_parse_json(F.concat(F.lit("["), line, F.lit("]"))))
    json_values = F.array_size(wrapped.try_cast("array<variant>"))
    # JSON numbers go through a double in from_json (1.0E7); the variant keeps them exact.
    json_amount = F.try_variant_get(wrapped, "$[0].amount", "string")
    quotes = F.length(line) - F.length(F.replace(line, F.lit('"'), F.lit("")))
    df = lines.select(
        "path", "line", "is_csv", line.alias("line_text"),
        F.col("text").isNull().alias("bad_utf8"), parsed.alias("p"),
        json_values.alias("json_values"), json_amount.alias("json_amount"),
        (quotes % 2 == 1).alias("odd_quotes"))
    fields = {c: _clean(F.col(f"p.{c}")) for c in COLUMNS}
    fields["amount"] = _clean(F.when(F.col("is_csv"), F.col("p.amount"))
                              .otherwise(F.coalesce("json_amount", "p.amount")))
    return df.select("*", *[v.alias(f"f_{k}") for k, v in fields.items()])


def _checks(df: DataFrame, max_amount: float) -> DataFrame:
    """Add `reason` and `detail` (null for good rows) and the converted values."""
    f = {c: F.col(f"f_{c}") for c in COLUMNS}
    cur = F.upper(f["currency"])
    card = F.regexp_replace(f["card_number"], "[ -]", "")
    amount = f["amount"].try_cast("decimal(38,10)")
    ts_text = F.upper(f["timestamp"])
    fraud = F.lower(f["is_fraud"])
    csv_fields = F.size(F.split(F.col("line_text"), ",", -1))
    malformed = F.when(F.col("bad_utf8"), "the line is not valid UTF-8").when(
        F.col("is_csv") & F.col("odd_quotes"), "the CSV row has an unbalanced double quote"
    ).when(F.col("is_csv") & F.col(f"p.{CORRUPT}").isNotNull(), F.concat(
        F.lit("the CSV row does not have the 10 columns "), F.lit(",".join(COLUMNS)),
        _opt(~F.col("line_text").contains('"'),
             F.concat(F.lit(" (it has "), csv_fields.cast("string"), F.lit(")"))))
    ).when(~F.col("is_csv") & F.col(f"p.{CORRUPT}").isNotNull(),
           "the line is not a valid JSON object"
    ).when(~F.col("is_csv") & ~F.coalesce(F.col("json_values") == 1, F.lit(False)),
           "the line is not exactly one strict JSON object (trailing content, NaN, "
           "single quotes or control characters)")
    missing = F.concat_ws(", ", *[F.when(f[c].isNull(), F.lit(c)) for c in COLUMNS])
    frac = F.regexp_replace(F.regexp_extract(f["amount"], r"\.([0-9]*)$", 1), "0+$", "")
    minor = (F.when(cur.isin(*codes_with_minor_unit(0)), 0)
             .when(cur.isin(*codes_with_minor_unit(3)), 3)
             .when(cur.isin(*codes_with_minor_unit(4)), 4).otherwise(2))
    known = cur.isin(*sorted(ISO_4217))
    allowed = F.when(known, F.least(minor, F.lit(2))).otherwise(2)
    upper = min(Decimal(repr(max_amount)), _DECIMAL_MAX)
    ts = F.when(ts_text.rlike(_TS_ZONED_RE), ts_text.try_cast("timestamp"))
    card_shape = card.rlike(r"^[0-9]{12,19}$")
    bad_field = F.when(~f["mcc"].rlike(r"^[0-9]{4}$"),
                       F.concat(F.lit("mcc "), _shown(f["mcc"]), F.lit(" is not 4 digits"))
    ).when(~fraud.isin("0", "1", "true", "false"), F.concat(
        F.lit("is_fraud "), _shown(f["is_fraud"]), F.lit(" is not one of 0, 1, true, false"))
    ).when(~f["country"].rlike(r"^[A-Za-z]{2}$"), F.concat(
        F.lit("country "), _shown(f["country"]), F.lit(" is not a 2-letter country code")))
    checks: list[tuple[str, Column, Column]] = [
        ("MALFORMED_ROW", malformed.isNotNull(), malformed),
        ("MISSING_FIELD", missing != "", F.concat(
            F.lit("required field(s) absent or empty: "), missing)),
        ("BAD_AMOUNT", ~f["amount"].rlike(_AMOUNT_RE), F.concat(
            F.lit("amount "), _shown(f["amount"]), F.lit(" is not a decimal number"))),
        ("BAD_AMOUNT", F.length(frac) > allowed, F.concat(
            F.lit("amount "), _shown(f["amount"]), F.lit(" has "), F.length(frac).cast("string"),
            F.lit(" significant decimal places; "), cur, F.lit(" allows "),
            allowed.cast("string"), _opt(minor > 2, F.lit(" in the decimal(18,2) amount")))),
        ("AMOUNT_OUT_OF_RANGE", F.coalesce(amount <= 0, F.lit(True)) | (amount > upper),
         F.concat(F.lit("amount "), _shown(f["amount"]),
                  F.lit(f" is outside (0, {upper}] (inputs.transactions.max_amount)"))),
        ("BAD_TIMESTAMP", ts.isNull(), F.concat(F.lit("timestamp "), _shown(f["timestamp"]),
            F.when(ts_text.rlike(_TS_NO_ZONE_RE), F.lit(" has no zone offset (Z or ±hh:mm)"))
            .otherwise(F.lit(" is not an ISO-8601 date-time with a zone")))),
        ("UNKNOWN_CURRENCY", ~known, F.concat(F.lit("currency "), _shown(f["currency"]),
                                              F.lit(" is not an ISO 4217 code"))),
        # Never the number itself: only its length and what is wrong with it.
        ("BAD_CARD", ~card_shape, F.concat(
            F.lit("card_number is not 12-19 digits: "), F.length(card).cast("string"),
            F.lit(" characters after removing spaces and dashes"),
            _opt(card.rlike("[^0-9]"), F.lit(", some not digits")))),
        ("BAD_CARD", ~luhn_valid(card), F.concat(
            F.lit("card_number ("), F.length(card).cast("string"),
            F.lit(" digits) fails the Luhn check"))),
        ("BAD_FIELD", bad_field.isNotNull(), bad_field),
    ]
    reason: Column = F.lit(None).cast("string")
    detail: Column = F.lit(None).cast("string")
    for code, failed, sentence in reversed(checks):  # the first listed check wins
        reason = F.when(F.coalesce(failed, F.lit(True)), F.lit(code)).otherwise(reason)
        detail = F.when(F.coalesce(failed, F.lit(True)), sentence).otherwise(detail)
    return df.select("*", reason.alias("reason"), detail.alias("detail"),
                     amount.alias("amount_dec"), ts.alias("ts"), cur.alias("cur"),
                     card.alias("card_digits"), fraud.isin("1", "true").alias("fraud"))


def _curated(df: DataFrame, key: bytes) -> DataFrame:
    keyed = with_hmac_key(df.filter(F.col("reason").isNull()), key)
    ipad, opad = F.col("_ipad"), F.col("_opad")

    def token(prefix: str, value: Column) -> Column:
        return F.substring(hmac_sha256_hex(F.concat(F.lit(prefix), value), ipad, opad), 1,
                           TOKEN_HEX_CHARS)

    out = keyed.select(
        F.col("f_txn_id").alias("txn_id"),
        token("account:", F.col("f_account")).alias("account_token"),
        token("card:", F.col("card_digits")).alias("card_token"),
        F.col("amount_dec").cast("decimal(18,2)").alias("amount"),
        F.col("cur").alias("currency"),
        F.col("ts"),
        F.col("f_merchant").alias("merchant"),
        F.col("f_mcc").alias("mcc"),
        F.upper(F.col("f_country")).alias("country"),
        F.col("fraud").alias("is_fraud"),
        source_with_line(F.col("path"), F.col("line")).alias("source"),
    )
    canonical = F.to_json(F.struct(
        *[F.col(c) for c in ("txn_id", "account_token", "card_token")],
        F.col("amount").cast("string").alias("amount"), F.col("currency"),
        F.unix_micros(F.col("ts")).cast("string").alias("ts_us"),
        *[F.col(c) for c in ("merchant", "mcc", "country")],
        F.col("is_fraud").cast("string").alias("is_fraud")))
    return out.withColumn("content_hash", F.sha2(canonical, 256))


def ingest_transactions(spark: SparkSession, cfg: TransactionInputConfig,
                        inputs: Sequence[Location], hmac_key: bytes) -> IngestResult:
    """Read the .csv/.jsonl/.json files under `inputs` (files or folders, recursive) into
    curated transactions (`CURATED_DDL`) and quarantine rows; see the module docstring for
    the checks, their order and the token/hash definitions. `n_input` is counted from the
    files independently. Raises CsvHeaderError when a CSV header is wrong."""
    hmac_pads(hmac_key)  # fail early on an empty key
    csv_files = list_input_files(inputs, [".csv"])
    json_files = list_input_files(inputs, [".jsonl", ".json"])
    files = sorted({*csv_files, *json_files}, key=lambda loc: loc.url)
    headers = _csv_headers(csv_files)
    log.info("transactions: %d CSV and %d JSONL files", len(csv_files), len(json_files))
    checked = _checks(_parse(spark, files, headers), cfg.max_amount)
    bad = checked.filter(F.col("reason").isNotNull())
    quarantine = quarantine_rows(bad, STAGE, source_with_line(F.col("path"), F.col("line")),
                                 F.col("reason"), F.col("detail"), _masked_raw())
    return IngestResult(curated=_curated(checked, hmac_key), quarantine=quarantine,
                        shared=checked, n_input=_count_records(spark, files, len(headers)))
