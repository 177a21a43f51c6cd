"""`pipeline inspect PATH...`: first contact with files nobody has described yet.

Reads a sample of each file (the first `SAMPLE_BYTES`, decompressed by suffix), detects
what it can and prints it as YAML comments, followed by a ready-to-paste
`inputs.<modality>` block: the whole output is valid YAML, so it can be saved and used as
the configuration of a run as it is (`pipeline run --config <it>`). Every guess the sample
cannot settle carries a `# unsure:` comment saying what to check.

Transactions (tables): format (CSV with its delimiter, whitespace-separated, JSON lines),
header, encoding, a row-count estimate, each column's type (integer, decimal, date with
its pattern, timestamp, 0/1 flag, text) and the likely role of each column from its name
and its values (`ROLE_NAMES`, then content: dates, decimal amounts, 0/1 labels, repeated
ids). Columns with no role become `features` (numbers numeric, short repeated text
categorical; free text is left out, with a comment). Text: encoding and, for JSON lines,
the text/id/label fields. Images: the formats found and whether labels come from folders.

Pure Python on the driver (no Spark): it reads samples only.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import posixpath
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.storage import Location, to_url

SAMPLE_BYTES = 1 << 20
SAMPLE_ROWS = 2000
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff",
                    ".ppm", ".pgm", ".pbm", ".ico")
TEXT_EXTENSIONS = (".txt", ".md")
JSON_EXTENSIONS = (".jsonl", ".ndjson", ".json")
#: column names (lower-case, without separators) that suggest each role
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "id": ("id", "txnid", "transid", "transactionid", "txid", "tranid"),
    "account": ("account", "accountid", "accountnumber", "customer", "customerid", "custid",
                "clientid", "userid", "acct", "acctid"),
    "card": ("card", "cardnumber", "pan", "ccnum", "ccnumber", "cardno"),
    "amount": ("amount", "amt", "transactionamount", "dollaramount", "value"),
    "currency": ("currency", "ccy", "currencycode", "cur"),
    "timestamp": ("timestamp", "time", "date", "datetime", "ts", "transdate",
                  "transactiondate", "transactiontime", "eventtime"),
    "merchant": ("merchant", "merchantname", "merchantid", "shop", "store"),
    "mcc": ("mcc", "merchantcategorycode", "categorycode"),
    "country": ("country", "countrycode", "merchantcountry"),
    "label": ("class", "label", "isfraud", "fraud", "target", "y", "defaultpaymentnextmonth",
              "default", "isfraudulent", "fraudflag"),
}
_DELIMITERS = (",", ";", "\t", "|")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?"
                  r"(Z|[+-]\d{2}(:?\d{2})?)?$")
_INT = re.compile(r"^[+-]?\d+$")
_DEC = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")


@dataclass
class Column:
    """What the sample says about one column."""

    name: str
    values: list[str] = field(default_factory=list)
    kind: str = "text"  # integer, decimal, date, timestamp, flag, text, empty
    date_format: str | None = None
    role: str | None = None
    unsure: str | None = None  # why the role guess is unsure (None: sure)

    @property
    def present(self) -> list[str]:
        return [v for v in self.values if v.strip() != ""]


@dataclass
class Table:
    """What the sample of a table says."""

    paths: list[str]
    format: str = "csv"
    delimiter: str = ","
    header: bool = True
    encoding: str = "utf-8"
    rows_estimate: int = 0
    columns: list[Column] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _open_sample(loc: Location) -> bytes:
    name = loc.path.lower()
    with loc.open("rb") as fh:
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=fh) as z:
                return z.read(SAMPLE_BYTES)
        if name.endswith(".bz2"):
            return bz2.BZ2File(fh).read(SAMPLE_BYTES)
        if name.endswith(".zst"):
            import pyarrow as pa

            with pa.CompressedInputStream(pa.PythonFile(fh, mode="r"), "zstd") as z:
                return bytes(z.read(SAMPLE_BYTES))
        return bytes(fh.read(SAMPLE_BYTES))


def _decode(sample: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 when it decodes, else what charset-normalizer detects."""
    cut = sample
    for _ in range(4):  # the sample may end inside a multi-byte character
        try:
            return cut.decode("utf-8"), "utf-8"
        except UnicodeDecodeError as exc:
            if exc.start < len(cut) - 4:
                break
            cut = cut[:-1]
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    encoding = best.encoding if best is not None else "latin-1"
    return sample.decode(encoding, errors="replace"), encoding


def _base(name: str) -> str:
    lower = name.lower()
    for suffix in (".gz", ".bz2", ".zst"):
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return lower


def _files(paths: Sequence[str]) -> list[Location]:
    out: list[Location] = []
    for p in paths:
        loc = Location(to_url(p))
        fs, path = loc.filesystem()
        if fs.isfile(path):
            out.append(loc)
        elif fs.isdir(path):
            out += [loc.at(loc.url_of(f)) for f in sorted(fs.find(path))
                    if not any(part.startswith((".", "_"))
                               for part in posixpath.relpath(f, path).split("/"))]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise ValueError(f"no files under {', '.join(paths)}")
    return out


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _yymmdd(v: str) -> bool:
    try:
        datetime.strptime(v, "%y%m%d")
    except ValueError:
        return False
    return True


def _yyyymmdd(v: str) -> bool:
    try:
        d = datetime.strptime(v, "%Y%m%d")
    except ValueError:
        return False
    return 1900 <= d.year <= 2100


def _type(col: Column) -> None:
    vals = col.present
    if not vals:
        col.kind = "empty"
        return
    if all(_INT.match(v) for v in vals):
        if all(v in ("0", "1") for v in vals):
            col.kind = "flag"
        elif all(len(v) == 8 and _yyyymmdd(v) for v in vals):
            col.kind, col.date_format = "date", "%Y%m%d"
        elif all(len(v) == 6 and _yymmdd(v) for v in vals):
            col.kind, col.date_format = "date", "%y%m%d"
        else:
            col.kind = "integer"
    elif all(_DEC.match(v) for v in vals):
        col.kind = "decimal"
    elif all(v.lower() in ("true", "false", "0", "1") for v in vals):
        col.kind = "flag"
    elif all(_ISO.match(v) for v in vals):
        col.kind = "timestamp"


def _delimited(lines: list[str]) -> tuple[str, str, list[list[str]]]:
    """(format, delimiter, rows) of the sample lines: the delimiter that splits every
    line into the same number (> 1) of fields, else whitespace when that does."""
    best: tuple[str, str, list[list[str]]] | None = None
    for d in _DELIMITERS:
        rows = list(csv.reader(lines, delimiter=d))
        widths = Counter(len(r) for r in rows)
        width, n = widths.most_common(1)[0]
        if width > 1 and n == len(rows) and (best is None or width > len(best[2][0])):
            best = ("csv", d, rows)
    if best is not None:
        return best
    rows = [line.split() for line in lines]
    if len({len(r) for r in rows}) == 1 and len(rows[0]) > 1:
        return "whitespace", " ", rows
    return "csv", ",", list(csv.reader(lines))


def _has_header(first: list[str], rest: list[list[str]]) -> bool:
    """A first row with no number where later rows have numbers is a header."""
    def numeric(v: str) -> bool:
        return bool(_DEC.match(v.strip()))

    if not rest:
        return not any(numeric(v) for v in first)
    for i, v in enumerate(first):
        later = [r[i] for r in rest if i < len(r) and r[i].strip()]
        if later and all(numeric(x) for x in later) and not numeric(v):
            return True
    return not any(numeric(v) for v in first) and any(
        any(numeric(x) for x in r) for r in rest)


def inspect_table(paths: Sequence[str]) -> Table:
    """Detect a transaction table's layout from a sample of its files."""
    files = _files(paths)
    table = Table(paths=list(paths))
    if _base(files[0].path).endswith(".parquet"):
        return _inspect_parquet(files, table)
    sample = _open_sample(files[0])
    text, table.encoding = _decode(sample)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(sample) >= SAMPLE_BYTES and lines:
        lines = lines[:-1]  # the sample ends inside a line
    total = 0
    for f in files:
        fs, path = f.filesystem()
        total += int(fs.size(path))
    avg = max(1.0, len(sample) / max(1, len(lines)))
    compressed = any(_base(f.path) != f.path.lower() for f in files)
    table.rows_estimate = int(total / avg) if not compressed else len(lines) * len(files)
    if compressed:
        table.notes.append("compressed input: the row estimate counts the sample only")
    lines = lines[:SAMPLE_ROWS + 1]
    if _base(files[0].path).endswith(JSON_EXTENSIONS):
        table.format = "jsonl"
        records = []
        for ln in lines:
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict):
                records.append(obj)
        names = list(dict.fromkeys(k for r in records for k in r))
        table.columns = [Column(n, ["" if r.get(n) is None else str(r.get(n))
                                    for r in records]) for n in names]
        table.header = False
    else:
        fmt, delim, rows = _delimited(lines)
        table.format, table.delimiter = fmt, delim
        table.header = _has_header(rows[0], rows[1:]) if rows else False
        names = ([n.strip() for n in rows[0]] if table.header
                 else [f"column_{i + 1}" for i in range(len(rows[0]) if rows else 0)])
        body = rows[1:] if table.header else rows
        table.columns = [Column(n, [r[i].strip() if i < len(r) else "" for r in body])
                         for i, n in enumerate(names)]
    if table.header and table.format != "jsonl":
        table.rows_estimate = max(0, table.rows_estimate - len(files))  # less the headers
    for col in table.columns:
        _type(col)
    _guess_roles(table)
    return table


def _inspect_parquet(files: Sequence[Location], table: Table) -> Table:
    """A Parquet table: its own schema and row counts (footers), values of the first rows."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table.format, table.header, table.encoding = "parquet", False, "binary (Parquet)"
    rows = 0
    for f in files:
        with f.open("rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    table.rows_estimate = rows
    with files[0].open("rb") as fh:
        first = next(pq.ParquetFile(fh).iter_batches(batch_size=SAMPLE_ROWS), None)
    if first is not None:
        for name in first.schema.names:
            values = pc.cast(first.column(name), pa.string()).to_pylist()
            table.columns.append(Column(name, ["" if v is None else v for v in values]))
    for col in table.columns:
        _type(col)
    _guess_roles(table)
    return table


def _guess_roles(table: Table) -> None:
    taken: set[str] = set()
    by_name: dict[str, Column] = {}
    for role, names in ROLE_NAMES.items():
        for col in table.columns:
            if col.role is None and role not in taken and _norm(col.name) in names:
                col.role = role
                taken.add(role)
                by_name[role] = col
                break
    n = len(table.columns[0].values) if table.columns else 0
    # Names alone can mislead: check the values of what the names suggested.
    for role, col in by_name.items():
        if role == "label" and col.kind != "flag":
            col.role, col.unsure = None, None
            taken.discard(role)
        elif role == "amount" and col.kind not in ("decimal", "integer"):
            col.role = None
            taken.discard(role)
        elif role == "timestamp" and col.kind in ("decimal", "integer"):
            col.unsure = ("a number of seconds: from an unknown origin (set "
                          "timestamp_origin; 1970-01-01 is a placeholder)")
        elif role == "id" and len(set(col.present)) < len(col.present):
            col.unsure = "values repeat in the sample; an id should be unique"
        elif role == "account" and col.kind not in ("text", "integer"):
            col.role = None
            taken.discard(role)
    # Content: what names did not settle.
    free = [c for c in table.columns if c.role is None]
    if "timestamp" not in taken:
        dated = [c for c in free if c.kind in ("date", "timestamp")]
        if dated:
            dated[0].role, dated[0].unsure = "timestamp", "guessed from the values"
            taken.add("timestamp")
    if "label" not in taken and table.columns:
        last = table.columns[-1]
        if last.role is None and last.kind == "flag":
            last.role, last.unsure = "label", "the last column holds only 0/1 values"
            taken.add("label")
    free = [c for c in table.columns if c.role is None]
    if "amount" not in taken:
        money = [c for c in free if c.kind == "decimal" and c.present and all(
            re.match(r"^[+-]?\d+\.\d{2}$", v) for v in c.present)]
        if len(money) == 1:
            money[0].role, money[0].unsure = "amount", "the only column with 2 decimals"
            taken.add("amount")
    if "account" not in taken and not table.header and table.columns:
        first = table.columns[0]
        if first.role is None and first.kind == "integer" and n and \
                len(set(first.present)) < len(first.present):
            first.role = "account"
            first.unsure = "the first column repeats like a customer id"
            taken.add("account")


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _is_free_text(col: Column) -> bool:
    vals = col.present
    return bool(vals) and len(set(vals)) > max(50, len(vals) // 2)


def transactions_yaml(table: Table) -> str:
    """The report (as comments) and the `inputs.transactions` block of a table."""
    out = [f"# pipeline inspect: {', '.join(table.paths)}",
           f"# format: {table.format}"
           + (f", delimiter {table.delimiter!r}" if table.format == "csv" else "")
           + (f", header: {'yes' if table.header else 'no'}"
              if table.format in ("csv", "whitespace") else ""),
           f"# encoding: {table.encoding}",
           f"# rows (estimate): {table.rows_estimate:,}"]
    out += [f"# note: {n}" for n in table.notes]
    out.append("# columns:")
    for c in table.columns:
        kind = c.kind + (f" ({c.date_format})" if c.date_format else "")
        role = f" -> {c.role}" if c.role else ""
        example = ", ".join(c.present[:3])
        out.append(f"#   {c.name}: {kind}{role}  e.g. {example[:60]}")
    roles = {c.role: c for c in table.columns if c.role}
    out += ["inputs:", "  transactions:",
            f"    paths: [{', '.join(_quote(p) for p in table.paths)}]"]
    if table.encoding not in ("utf-8", "ascii", "binary (Parquet)"):
        out.append(f"    # unsure: the sample is {table.encoding}, but transaction ingest "
                   "reads UTF-8; convert the files first")
    amount = roles.get("amount")
    if amount is not None and amount.present:
        low = min(float(v) for v in amount.present)
        if low <= 0:
            out.append(f"    min_amount: {0 if low == 0 else low * 10:g}"
                       "  # the sample has amounts <= 0")
    out += ["    schema:", f"      format: {table.format}"]
    if table.format == "csv":
        out.append(f"      delimiter: {_quote(table.delimiter)}")
    if table.format in ("csv", "whitespace"):
        out.append(f"      header: {'true' if table.header else 'false'}")
        if not table.header:
            out.append(f"      columns: [{', '.join(_quote(c.name) for c in table.columns)}]"
                       "  # no header: rename at will, keep the order")
    for role in ROLE_NAMES:
        col = roles.get(role)
        if col is None:
            if role in ("id", "account", "amount", "timestamp", "label", "currency"):
                out.append(f"      # {role}: not found"
                           + ("; ids are made from file and line" if role == "id" else "")
                           + ("; the fraud task is disabled without one"
                              if role == "label" else "")
                           + ("; or set currency_constant: USD" if role == "currency"
                              else ""))
            continue
        line = f"      {role}: {_quote(col.name)}"
        out.append(line + (f"  # unsure: {col.unsure}" if col.unsure else ""))
        if role == "timestamp":
            if col.kind == "date":
                out.append(f"      timestamp_format: {_quote(str(col.date_format))}")
            elif col.kind in ("decimal", "integer"):
                out += ["      timestamp_format: seconds",
                        '      timestamp_origin: "1970-01-01T00:00:00Z"'
                        "  # unsure: set the real start"]
            elif col.kind == "timestamp" and col.present and not re.search(
                    r"(Z|[+-]\d{2}(:?\d{2})?)$", col.present[0]):
                out.append('      timezone: "UTC"  # unsure: the timestamps carry no zone')
    if "card" in roles:
        out.append(f"      pii: [{_quote(roles['card'].name)}]  # tokenized by HMAC")
    numeric: list[str] = []
    categorical: list[str] = []
    dropped: list[str] = []
    for c in table.columns:
        if c.role is not None or c.kind == "empty":
            continue
        if c.kind in ("integer", "decimal", "flag"):
            numeric.append(c.name)
        elif _is_free_text(c):
            dropped.append(c.name)
        else:
            categorical.append(c.name)
    if numeric or categorical:
        out.append("      features:")
        if numeric:
            out.append(f"        numeric: [{', '.join(_quote(c) for c in numeric)}]")
        if categorical:
            out.append(f"        categorical: [{', '.join(_quote(c) for c in categorical)}]"
                       "  # unsure: check none of these is personal data (add it to pii)")
    if dropped:
        out.append(f"      # left out (free text, mostly distinct values): {', '.join(dropped)}")
    return "\n".join(out) + "\n"


def _looks_tabular(loc: Location) -> bool:
    """A .txt file whose lines split into the same number of fields, mostly numbers (a
    purchase log), is a table, not a document."""
    text, _ = _decode(_open_sample(loc))
    lines = [ln for ln in text.splitlines() if ln.strip()][:200]
    if len(lines) < 2:
        return False
    _, _, rows = _delimited(lines)
    if len({len(r) for r in rows}) != 1 or len(rows[0]) < 2:
        return False
    cells = [v.strip() for r in rows[1:] for v in r]
    return sum(bool(_DEC.match(v)) for v in cells) >= 0.5 * len(cells)


def detect_modality(paths: Sequence[str]) -> str:
    """images, text or transactions, from the files' names and a sample."""
    files = _files(paths)
    names = Counter(
        "images" if _base(f.path).endswith(IMAGE_EXTENSIONS) else
        "text" if _base(f.path).endswith(TEXT_EXTENSIONS) else "table" for f in files)
    if names["images"] > names["table"] + names["text"]:
        return "images"
    if names["text"] > names["table"] and not _looks_tabular(
            next(f for f in files if _base(f.path).endswith(TEXT_EXTENSIONS))):
        return "text"
    table = next((f for f in files
                  if not _base(f.path).endswith(IMAGE_EXTENSIONS + TEXT_EXTENSIONS)), files[0])
    if _base(table.path).endswith(".parquet"):
        return "transactions"
    if _base(table.path).endswith(JSON_EXTENSIONS):
        text, _ = _decode(_open_sample(table))
        for ln in text.splitlines()[:50]:
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict) and any(
                    isinstance(v, str) and len(v) > 200 for v in obj.values()):
                return "text"
    return "transactions"


def text_yaml(paths: Sequence[str]) -> str:
    """The report and `inputs.text` block of a folder of documents."""
    files = _files(paths)
    encodings = Counter(_decode(_open_sample(f))[1] for f in files[:200])
    out = [f"# pipeline inspect: {', '.join(paths)}", f"# files: {len(files):,}",
           "# encodings (first 200 files): "
           + ", ".join(f"{e} {n}" for e, n in encodings.most_common())]
    out += ["inputs:", "  text:", f"    paths: [{', '.join(_quote(p) for p in paths)}]"]
    if len(encodings) > 1:
        out.append("    encoding: auto  # several encodings: detected per file")
    elif encodings and next(iter(encodings)) not in ("utf-8", "ascii"):
        out.append(f"    encoding: {_quote(next(iter(encodings)))}")
    jsonl = [f for f in files if _base(f.path).endswith(JSON_EXTENSIONS)]
    if jsonl:
        text, _ = _decode(_open_sample(jsonl[0]))
        keys: Counter[str] = Counter()
        longest: Counter[str] = Counter()
        for ln in text.splitlines()[:200]:
            try:
                obj = json.loads(ln)
            except ValueError:
                continue
            if isinstance(obj, dict):
                keys.update(obj)
                strings = {k: len(v) for k, v in obj.items() if isinstance(v, str)}
                if strings:
                    longest[max(strings, key=lambda k: strings[k])] += 1
        if longest:
            out.append(f"    text_field: {_quote(longest.most_common(1)[0][0])}"
                       "  # unsure: the longest string field")
        for field_name, names in (("id_field", ("id", "doc_id", "uid")),
                                  ("label_field", ("label", "class", "category"))):
            found = [k for k in keys if k.lower() in names]
            if found:
                out.append(f"    {field_name}: {_quote(found[0])}")
    return "\n".join(out) + "\n"


def images_yaml(paths: Sequence[str]) -> str:
    """The report and `inputs.images` block of an image folder."""
    files = _files(paths)
    kinds = Counter(posixpath.splitext(_base(f.path))[1] or "(none)" for f in files)
    parents = {posixpath.basename(posixpath.dirname(f.path)) for f in files}
    out = [f"# pipeline inspect: {', '.join(paths)}", f"# files: {len(files):,}",
           "# extensions: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()),
           f"# parent folders (labels): {len(parents)}"]
    out += ["inputs:", "  images:", f"    paths: [{', '.join(_quote(p) for p in paths)}]"]
    if len(parents) < 2:
        out.append("    # unsure: one folder only; the images look unlabeled")
    return "\n".join(out) + "\n"


def inspect(paths: Sequence[str], modality: str | None = None) -> str:
    """The `pipeline inspect` output for `paths` (YAML with the report as comments)."""
    from pipeline import modalities

    chosen = modality or detect_modality(paths)
    spec = modalities.find(chosen)
    if spec is None or spec.inspect is None:
        known = [s.name for s in modalities.specs() if s.inspect is not None]
        raise ValueError(f"inspect knows {', '.join(known)}, not {chosen!r}")
    return spec.inspect(paths)

