"""The declared schema of a transaction table: `inputs.transactions.schema`.

A transaction table is described by its format and a column for each role the pipeline
knows (docs/inputs.md): `id`, `account`, `card`, `amount`, `currency` (a column or a
constant), `timestamp` (with its format), `merchant`, `mcc`, `country`, `label`, plus
`features` carried into the curated data and the fraud model, and the `pii` columns
tokenized by HMAC. A role left unset (null) is not in the data: its curated column is null
and none of its checks run.

No `schema` at all means the 10-column card-transaction format of the sample data
(`DEFAULT_SCHEMA`): `.csv` files with the header
`txn_id,account,card_number,amount,currency,timestamp,merchant,mcc,country,is_fraud` and
`.jsonl`/`.json` files with those keys. A declared schema starts from nothing: every role
it does not name is unmapped.

Plain frozen dataclasses (no Spark): `pipeline.config` embeds them, `schema_problems`
checks them at config load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

#: the roles of a transaction table, in curated column order
ROLES: tuple[str, ...] = ("id", "account", "card", "amount", "currency", "timestamp",
                          "merchant", "mcc", "country", "label")
#: the curated column of each role
ROLE_COLUMNS: dict[str, str] = {
    "id": "txn_id", "account": "account_token", "card": "card_token", "amount": "amount",
    "currency": "currency", "timestamp": "ts", "merchant": "merchant", "mcc": "mcc",
    "country": "country", "label": "is_fraud"}
#: curated columns that are not roles (features may not take these names either)
RESERVED_COLUMNS: tuple[str, ...] = (
    *ROLE_COLUMNS.values(), "source", "content_hash", "cluster_id", "is_probable_retry",
    "velocity_1h", "velocity_24h", "split", "fraud_score")
#: roles whose value may be tokenized (account and card always are)
PII_ROLES: tuple[str, ...] = ("id", "merchant")
TIMESTAMP_FORMATS = ("iso", "epoch_s", "epoch_ms", "seconds")
#: strftime directives a `timestamp_format` pattern may use
_STRFTIME = {"%Y": "yyyy", "%y": "yy", "%m": "MM", "%d": "dd", "%H": "HH", "%M": "mm",
             "%S": "ss", "%f": "SSSSSS", "%j": "DDD", "%b": "MMM", "%%": "%"}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class FeaturesConfig:
    """Further columns carried into the curated data and into the fraud model."""

    # Parsed as numbers (blank = null); the model standardizes them with train-split
    # statistics.
    numeric: tuple[str, ...] = ()
    # Kept as text; the model hashes them into buckets.
    categorical: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransactionSchemaConfig:
    """How to read one transaction table: format, a column per role, features, PII."""

    # auto: by file extension (.csv with a header, .jsonl/.json lines); parquet: .parquet
    # files, each row a record (`source` is file:row).
    format: Literal["auto", "csv", "whitespace", "jsonl", "parquet"] = "auto"
    # CSV only: the field separator (one character; "\t" for TSV).
    delimiter: str = ","
    # CSV and whitespace: whether each file's first non-blank line names the columns.
    header: bool = True
    # Every column of the file, in order: needed without a header (else the header says).
    columns: tuple[str, ...] = ()
    id: str | None = None
    account: str | None = None
    card: str | None = None
    amount: str | None = None
    currency: str | None = None
    # An ISO 4217 code used for every row when the table has no currency column.
    currency_constant: str | None = None
    timestamp: str | None = None
    # iso (with a zone, or naive in `timezone`), epoch_s, epoch_ms, seconds (from
    # `timestamp_origin`), or a strftime pattern such as "%y%m%d".
    timestamp_format: str = "iso"
    timestamp_origin: str | None = None
    # The zone of naive timestamps (None: ISO timestamps must carry one; patterns are UTC).
    timezone: str | None = None
    merchant: str | None = None
    mcc: str | None = None
    country: str | None = None
    label: str | None = None
    # Mapped roles whose blank value quarantines the row (MISSING_FIELD); None: all mapped
    # roles. Blank values of the others are null.
    required: tuple[str, ...] | None = None
    # Further columns tokenized by HMAC (a mapped `id` or `merchant` column, or a
    # categorical feature); `account` and `card` always are.
    pii: tuple[str, ...] = ()
    features: FeaturesConfig = field(default_factory=FeaturesConfig)

    def role_column(self, role: str) -> str | None:
        """The source column of `role` (None: unmapped)."""
        return getattr(self, role)  # type: ignore[no-any-return]

    @property
    def mapped(self) -> tuple[str, ...]:
        """The roles that name a column, in `ROLES` order."""
        return tuple(r for r in ROLES if self.role_column(r) is not None)

    @property
    def required_roles(self) -> tuple[str, ...]:
        return self.mapped if self.required is None else tuple(
            r for r in self.mapped if r in self.required)

    @property
    def has_currency(self) -> bool:
        return self.currency is not None or self.currency_constant is not None

    def source_columns(self) -> tuple[str, ...]:
        """Every column the schema reads, first appearance first (roles, then features)."""
        names = [self.role_column(r) for r in self.mapped]
        names += [*self.features.numeric, *self.features.categorical]
        return tuple(dict.fromkeys(n for n in names if n is not None))

    def feature_columns(self) -> dict[str, str]:
        """Curated name -> source column of every feature (curated names are the source
        names with anything but letters, digits and '_' replaced by '_')."""
        return {feature_name(c): c for c in (*self.features.numeric,
                                             *self.features.categorical)}


def feature_name(column: str) -> str:
    """The curated column name of a feature column."""
    return _SAFE_NAME.sub("_", column)


def strftime_to_spark(pattern: str) -> str:
    """A strftime pattern as a Spark datetime pattern (ValueError on an unsupported
    directive); literal text is quoted."""
    out: list[str] = []
    literal: list[str] = []
    i = 0

    def flush() -> None:
        if literal:
            text = "".join(literal).replace("'", "''")
            out.append(text if text.isspace() or all(c in "-/:.T _," for c in text)
                       else f"'{text}'")
            literal.clear()

    while i < len(pattern):
        two = pattern[i:i + 2]
        if pattern[i] == "%":
            if two not in _STRFTIME:
                raise ValueError(f"unsupported strftime directive {two!r} (supported: "
                                 f"{' '.join(_STRFTIME)})")
            flush()
            out.append(_STRFTIME[two] if two != "%%" else "'%'")
            i += 2
            continue
        literal.append(pattern[i])
        i += 1
    flush()
    return "".join(out)


#: the sample data's 10-column format
DEFAULT_SCHEMA = TransactionSchemaConfig(
    format="auto", header=True,
    columns=("txn_id", "account", "card_number", "amount", "currency", "timestamp",
             "merchant", "mcc", "country", "is_fraud"),
    id="txn_id", account="account", card="card_number", amount="amount", currency="currency",
    timestamp="timestamp", merchant="merchant", mcc="mcc", country="country",
    label="is_fraud")


def schema_problems(s: TransactionSchemaConfig, key: str, iso_codes: frozenset[str]
                    ) -> list[str]:
    """Problems of a declared schema, each naming its dotted key under `key`."""
    p: list[str] = []
    if s.format == "csv" and len(s.delimiter) != 1:
        p.append(f"{key}.delimiter: must be one character, got {s.delimiter!r}")
    if s.format in ("csv", "whitespace") and not s.header and not s.columns:
        p.append(f"{key}.columns: a file without a header needs the list of its columns")
    if len(set(s.columns)) != len(s.columns):
        p.append(f"{key}.columns: names repeat")
    if not s.mapped and not s.features.numeric and not s.features.categorical:
        p.append(f"{key}: maps no role and no feature; name at least one column")
    known = set(s.columns)
    for name in (*s.mapped, "features.numeric", "features.categorical", "pii"):
        cols = ([s.role_column(name)] if name in ROLES else
                list(s.pii) if name == "pii" else
                list(getattr(s.features, name.split(".")[1])))
        for col in cols:
            if not col:
                p.append(f"{key}.{name}: empty column name")
            elif known and col not in known:
                p.append(f"{key}.{name}: column {col!r} is not in {key}.columns")
    if s.currency is not None and s.currency_constant is not None:
        p.append(f"{key}.currency_constant: set either currency (a column) or "
                 "currency_constant, not both")
    if s.currency_constant is not None and s.currency_constant.upper() not in iso_codes:
        p.append(f"{key}.currency_constant: {s.currency_constant!r} is not an ISO 4217 code")
    fmt = s.timestamp_format
    if "%" in fmt:
        try:
            strftime_to_spark(fmt)
        except ValueError as exc:
            p.append(f"{key}.timestamp_format: {exc}")
    elif fmt not in TIMESTAMP_FORMATS:
        p.append(f"{key}.timestamp_format: must be one of {', '.join(TIMESTAMP_FORMATS)} or "
                 f"a strftime pattern such as '%y%m%d', got {fmt!r}")
    if fmt == "seconds" and not s.timestamp_origin:
        p.append(f"{key}.timestamp_origin: timestamp_format 'seconds' counts from an origin; "
                 "set it, e.g. '2013-09-01T00:00:00Z'")
    if s.timestamp_origin is not None:
        from datetime import datetime

        try:
            datetime.fromisoformat(s.timestamp_origin.replace("Z", "+00:00"))
        except ValueError:
            p.append(f"{key}.timestamp_origin: not an ISO-8601 date-time: "
                     f"{s.timestamp_origin!r}")
    if s.timezone is not None:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(s.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            p.append(f"{key}.timezone: unknown time zone {s.timezone!r}")
    for role in s.required or ():
        if role not in ROLES:
            p.append(f"{key}.required: {role!r} is not a role ({', '.join(ROLES)})")
    pii_ok = {s.role_column(r) for r in PII_ROLES} | set(s.features.categorical)
    pii_ok |= {s.account, s.card}
    for col in s.pii:
        if col not in pii_ok:
            p.append(f"{key}.pii: {col!r} must be the id, account, card or merchant column "
                     "or a categorical feature (numbers are not tokenized)")
    both = set(s.features.numeric) & set(s.features.categorical)
    if both:
        p.append(f"{key}.features: {sorted(both)} are both numeric and categorical")
    seen: dict[str, str] = {}
    reserved = {c.lower() for c in RESERVED_COLUMNS}
    for col in (*s.features.numeric, *s.features.categorical):
        name = feature_name(col)
        if name.lower() in reserved:
            p.append(f"{key}.features: column {col!r} would be curated as {name!r}, a name "
                     "the curated table already has")
        elif name.lower() in seen and seen[name.lower()] != col:
            p.append(f"{key}.features: {seen[name.lower()]!r} and {col!r} give the same "
                     f"curated column {name!r}")
        seen[name.lower()] = col
    return p
