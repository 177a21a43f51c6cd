"""Transaction ingest: one planted row per defect, tokens, Luhn, time zones, exact decimals,
reconciliation, determinism, the no-card-leak grep, and the synth ground truth."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.config import TransactionInputConfig
from pipeline.ingest.currencies import ISO_4217, MINOR_UNITS
from pipeline.ingest.reasons import TRANSACTION_REASONS
from pipeline.ingest.tokens import TOKEN_HEX_CHARS, hmac_sha256_hex, with_hmac_key
from pipeline.ingest.transactions import (
    COLUMNS,
    CURATED_DDL,
    REASON_ORDER,
    CsvHeaderError,
    ingest_transactions,
    luhn_valid,
)
from pipeline.storage import Location, to_url

KEY = b"test-hmac-key"
CFG = TransactionInputConfig()
CARD_A, CARD_B, CARD_AMEX = "4111111111111111", "5555555555554444", "378282246310005"


def luhn_ref(number: str) -> bool:
    """Plain-Python Luhn, written independently of the Spark version."""
    if not number.isdigit():
        return False
    digits = [int(c) for c in number]
    odd = digits[-1::-2]
    even = [sum(divmod(2 * d, 10)) for d in digits[-2::-2]]
    return (sum(odd) + sum(even)) % 10 == 0


def with_check_digit(payload: str) -> str:
    return next(payload + d for d in "0123456789" if luhn_ref(payload + d))


CARD_12, CARD_19 = with_check_digit("41111111111"), with_check_digit("411111111111111111")


def token(prefix: str, value: str) -> str:
    return hmac.new(KEY, (prefix + value).encode(), hashlib.sha256).hexdigest()[:TOKEN_HEX_CHARS]


@dataclass
class Planted:
    source: str
    txn_id: str
    reason: str | None
    card: str


@dataclass
class Dataset:
    """Raw files written line by line, with the expected outcome of every record."""

    root: Path
    lines: dict[str, list[bytes]] = field(default_factory=dict)
    planted: list[Planted] = field(default_factory=list)
    n: int = 0

    def _add(self, fname: str, line: bytes, txn_id: str, reason: str | None, card: str) -> None:
        rows = self.lines.setdefault(fname, [])
        if not rows and fname.lower().endswith(".csv"):
            rows.extend([b"", ",".join(COLUMNS).encode()])  # a blank line before the header
        rows.append(line)
        self.planted.append(Planted(f"{to_url(self.root)}/{fname}:{len(rows)}", txn_id, reason,
                                    card))

    def row(self, over: dict[str, Any]) -> dict[str, Any]:
        self.n += 1
        return {"txn_id": f"t{self.n:03d}", "account": "acct-1", "card_number": CARD_A,
                "amount": "12.50", "currency": "USD", "timestamp": "2026-01-05T10:00:00Z",
                "merchant": "Shop", "mcc": "5411", "country": "US", "is_fraud": "0", **over}

    def csv(self, fname: str, reason: str | None, raw: str | bytes | None = None,
            **over: Any) -> None:
        r = self.row(over)

        def quote(v: str) -> str:
            return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"') else v

        line = raw if raw is not None else ",".join(quote(str(r[c])) for c in COLUMNS)
        self._add(fname, line if isinstance(line, bytes) else line.encode(), r["txn_id"],
                  reason, str(r["card_number"]))

    def json(self, fname: str, reason: str | None, raw: str | bytes | None = None,
             drop: tuple[str, ...] = (), **over: Any) -> None:
        r = self.row(over)
        line = raw if raw is not None else json.dumps(
            {k: v for k, v in r.items() if k not in drop}, ensure_ascii=False)
        self._add(fname, line if isinstance(line, bytes) else line.encode(), r["txn_id"],
                  reason, str(r["card_number"]))

    def write(self) -> None:
        for fname, rows in self.lines.items():
            path = self.root / fname
            path.parent.mkdir(parents=True, exist_ok=True)
            sep = b"\r\n" if fname.endswith(".CSV") else b"\n"
            path.write_bytes(sep.join(rows) + sep)


def build_dataset(root: Path) -> Dataset:
    d = Dataset(root)
    a, b, c, j = "a.csv", "nested/deep/b.CSV", "c.jsonl", "nested/d.json"
    # Good rows, in every accepted format.
    d.csv(a, None)
    d.csv(a, None, amount="1500", currency="JPY", timestamp="2026-01-05T10:00:00+09:00",
          card_number=CARD_B, country="JP")
    d.csv(a, None, card_number="5555 5555 5555 4444", is_fraud="true", merchant='Shop, "Inc"',
          timestamp="2026-01-05 10:00:00-05:00")
    d.csv(b, None, amount="0.10", timestamp="2026-03-01T23:30:00.5+05:30", card_number=CARD_12)
    d.csv(b, None, card_number=CARD_19, timestamp="2026-01-05T10:00:00+0100", is_fraud="FALSE")
    d.csv(b, None, card_number="4111  1111--1111 1111", amount=" 7.00 ", currency="eur")
    d.json(c, None, card_number="4111-1111-1111-1111", amount=0.2, currency="eur", country="de",
           is_fraud=1)
    d.json(c, None, amount=10000000.0, card_number=CARD_AMEX, extra_key="ignored")
    d.json(j, None, card_number=int(CARD_B), is_fraud=True, timestamp="2026-01-05T10:00:00-08:00")
    # MALFORMED_ROW
    full = d.row({})
    d.csv(a, "MALFORMED_ROW", raw=",".join(str(full[k]) for k in COLUMNS[:9]))
    d.csv(a, "MALFORMED_ROW", raw=",".join(str(full[k]) for k in COLUMNS) + ",EXTRA")
    d.csv(a, "MALFORMED_ROW", raw=",".join(str(full[k]) for k in COLUMNS[:6]) + ',"Shop,5411,US,0')
    # An unclosed quote on the last field: Spark's CSV parser takes it silently.
    d.csv(a, "MALFORMED_ROW", raw=",".join(str(full[k]) for k in COLUMNS[:9]) + ',"0')
    d.csv(b, "MALFORMED_ROW", raw=b"t900,acct-1," + CARD_A.encode() + b",1.00,USD,"
          b"2026-01-05T10:00:00Z,Caf\xe9,5411,FR,0")
    good_json = json.dumps(full)
    d.json(c, "MALFORMED_ROW", raw=good_json[:60])
    d.json(c, "MALFORMED_ROW", raw=good_json[:good_json.index("acct-1") + 3])  # in account
    d.json(c, "MALFORMED_ROW", raw=good_json + " garbage")
    d.json(c, "MALFORMED_ROW", raw=good_json + good_json)
    d.json(c, "MALFORMED_ROW", raw=good_json + ",")
    # A `]` after the object closed the parser's [...] wrapper; what followed was ignored.
    d.json(c, "MALFORMED_ROW", raw=good_json + "] garbage")
    d.json(c, "MALFORMED_ROW", raw=good_json + ', "~~"] garbage')
    d.json(c, "MALFORMED_ROW", raw="[1, 2]")
    d.json(c, "MALFORMED_ROW", raw=good_json.replace('"', "'"))  # single quotes
    d.json(c, "MALFORMED_ROW", raw=good_json[:good_json.index(CARD_A) + 8])  # in the card
    d.json(c, "MALFORMED_ROW", raw=good_json.replace('"12.50"', "NaN"))
    d.json(j, "MALFORMED_ROW", raw=good_json.replace("Shop", "Sh\xffop").encode("latin-1"))
    # MISSING_FIELD (also before a bad amount)
    d.csv(a, "MISSING_FIELD", account="")
    d.csv(a, "MISSING_FIELD", merchant="   ", amount="abc")
    d.json(c, "MISSING_FIELD", drop=("currency",))
    d.json(c, "MISSING_FIELD", timestamp=None)
    # BAD_AMOUNT (also before a bad card); the card in an odd format must still be masked
    for amount in ("12,50€", "abc", "1e3", "12.505", "1,000.00"):
        d.csv(a, "BAD_AMOUNT", amount=amount, card_number="4111  1111  1111  1111")
    d.csv(b, "BAD_AMOUNT", amount="12.5", currency="JPY")
    d.json(c, "BAD_AMOUNT", amount="12.5.0", card_number="4111.1111.1111.1112")
    # AMOUNT_OUT_OF_RANGE (also before a bad timestamp)
    for amount in ("0", "-5.00", "10000000.01", "1" * 40):
        d.csv(a, "AMOUNT_OUT_OF_RANGE", amount=amount)
    d.json(c, "AMOUNT_OUT_OF_RANGE", amount=-1, timestamp="yesterday")
    # BAD_TIMESTAMP (also before an unknown currency)
    for ts in ("2026-01-05T10:00:00", "2026-02-30T10:00:00Z", "yesterday", "1736071200"):
        d.csv(a, "BAD_TIMESTAMP", timestamp=ts)
    d.json(c, "BAD_TIMESTAMP", timestamp="2026-01-05T10:00Z", currency="XYZ")
    # UNKNOWN_CURRENCY (also before a bad card)
    for cur in ("XYZ", "HRK", "US"):
        d.csv(a, "UNKNOWN_CURRENCY", currency=cur)
    d.json(c, "UNKNOWN_CURRENCY", currency="EURO", card_number="123")
    # BAD_CARD (also before a bad field)
    for card in (CARD_A[:-1] + "2", "41111111O1111111", "41111111111", "4" * 20,
                 "4111.1111.1111.1111"):
        d.csv(a, "BAD_CARD", card_number=card)
    d.json(c, "BAD_CARD", card_number="4111-1111-1111-1112", mcc="12")
    # BAD_FIELD
    for over in ({"mcc": "541"}, {"mcc": "54111"}, {"is_fraud": "maybe"}, {"is_fraud": "2"},
                 {"country": "USA"}, {"country": "U1"}):
        d.csv(a, "BAD_FIELD", **over)
    d.write()
    return d


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return build_dataset(tmp_path_factory.mktemp("txn") / "raw")


@pytest.fixture(scope="module")
def result(spark: Any, planted: Dataset) -> Iterator[dict[str, Any]]:
    res = ingest_transactions(spark, CFG, [Location(str(planted.root))], KEY)
    # Cached as the ingest stage does, so the tests below do not re-read the files each time.
    res.curated.persist()
    res.quarantine.persist()
    yield {"res": res, "n_input": res.n_input,
           "curated": {r["source"]: r.asDict() for r in res.curated.collect()},
           "quarantine": {r["source"]: r.asDict() for r in res.quarantine.collect()}}
    res.curated.unpersist()
    res.quarantine.unpersist()


# ----------------------------------------------------------------------------- unit tests


@pytest.mark.unit
def test_currency_list() -> None:
    assert {"USD", "EUR", "JPY", "BHD", "CHF", "XCG", "ZWG"} <= ISO_4217
    assert not {"HRK", "VEF", "BTC", "EURO", "XYZ"} & ISO_4217
    assert (MINOR_UNITS["JPY"], MINOR_UNITS["USD"], MINOR_UNITS["BHD"], MINOR_UNITS["CLF"]) == (
        0, 2, 3, 4)
    assert len(ISO_4217) > 170 and all(len(c) == 3 and c.isupper() for c in ISO_4217)


@pytest.mark.unit
def test_reason_order_uses_listed_codes() -> None:
    assert set(REASON_ORDER) <= set(TRANSACTION_REASONS)
    assert set(TRANSACTION_REASONS) - set(REASON_ORDER) == {"LABEL_CONFLICT",
                                                           "UNSUPPORTED_FILE"}


# ------------------------------------------------------------------------ Spark: parsing


@pytest.mark.integration
@pytest.mark.parametrize("reason", REASON_ORDER)
def test_each_reason_at_its_source(result: dict[str, Any], planted: Dataset,
                                   reason: str) -> None:
    expected = [p for p in planted.planted if p.reason == reason]
    assert expected
    for p in expected:
        got = result["quarantine"].get(p.source)
        assert got is not None, f"{p.txn_id} ({reason}) not quarantined"
        assert (got["reason"], got["stage"]) == (reason, "ingest"), (p, got)
        assert got["detail"]


@pytest.mark.integration
def test_good_rows_curated_and_counts_reconcile(result: dict[str, Any], planted: Dataset
                                                ) -> None:
    good = {p.source: p.txn_id for p in planted.planted if p.reason is None}
    assert {s: r["txn_id"] for s, r in result["curated"].items()} == good
    assert set(result["quarantine"]) == {p.source for p in planted.planted if p.reason}
    assert result["n_input"] == len(planted.planted)
    assert result["n_input"] == len(result["curated"]) + len(result["quarantine"])


@pytest.mark.integration
def test_details_name_field_and_value_but_never_the_card(result: dict[str, Any]) -> None:
    details = [q["detail"] for q in result["quarantine"].values()]
    assert "amount '12,50€' is not a decimal number" in details
    assert "currency 'HRK' is not an ISO 4217 code" in details
    assert "mcc '541' is not 4 digits" in details
    assert any(d.startswith("timestamp '2026-01-05T10:00:00' has no zone") for d in details)
    assert any("card_number" in d and "Luhn" in d for d in details)
    assert "required field(s) absent or empty: currency" in details
    for q in result["quarantine"].values():
        assert re.search("[0-9]{4}", q["detail"].replace("12-19", "")) is None or q[
            "reason"] not in ("BAD_CARD", "MISSING_FIELD", "MALFORMED_ROW"), q
        if q["reason"] == "BAD_CARD":
            assert "1111" not in (q["raw"] or "")


@pytest.mark.integration
def test_curated_schema_and_tokens(spark: Any, result: dict[str, Any]) -> None:
    expected = spark.createDataFrame([], CURATED_DDL).schema
    assert result["res"].curated.schema.simpleString() == expected.simpleString()
    rows = {r["txn_id"]: r for r in result["curated"].values()}
    assert rows["t001"]["card_token"] == token("card:", CARD_A)
    assert rows["t001"]["account_token"] == token("account:", "acct-1")
    # Spaces, dashes and a JSON number are the same card as its plain digits.
    assert rows["t003"]["card_token"] == rows["t002"]["card_token"] == token("card:", CARD_B)
    assert rows["t006"]["card_token"] == rows["t007"]["card_token"] == rows["t001"]["card_token"]
    assert rows["t009"]["card_token"] == token("card:", CARD_B)
    assert rows["t007"]["currency"] == "EUR" and rows["t007"]["country"] == "DE"
    assert [rows[t]["is_fraud"] for t in ("t001", "t003", "t005", "t007", "t009")] == [
        False, True, False, True, True]
    assert rows["t003"]["merchant"] == 'Shop, "Inc"'


@pytest.mark.integration
def test_mixed_time_zones_become_utc_instants(result: dict[str, Any]) -> None:
    from pyspark.sql import functions as F

    got = {r["txn_id"]: r["us"] for r in result["res"].curated.select(
        "txn_id", F.unix_micros("ts").alias("us")).collect()}

    def us(month: int, day: int, hour: int) -> int:
        return int(datetime(2026, month, day, hour, tzinfo=UTC).timestamp()) * 1_000_000

    assert got["t001"] == us(1, 5, 10)
    assert got["t002"] == us(1, 5, 1)  # +09:00
    assert got["t003"] == us(1, 5, 15)  # -05:00, space separator
    assert got["t004"] == us(3, 1, 18) + 500_000  # +05:30, half a second
    assert got["t005"] == us(1, 5, 9)  # +0100
    assert got["t009"] == us(1, 5, 18)  # -08:00


@pytest.mark.integration
def test_decimals_are_exact(result: dict[str, Any]) -> None:
    from pyspark.sql import functions as F

    rows = {r["txn_id"]: r for r in result["curated"].values()}
    assert rows["t004"]["amount"] == Decimal("0.10") and rows["t007"]["amount"] == Decimal("0.20")
    assert rows["t002"]["amount"] == Decimal("1500.00")  # JPY
    assert rows["t008"]["amount"] == Decimal("10000000.00")  # a JSON number at the maximum
    total = result["res"].curated.filter(F.col("txn_id").isin("t004", "t007")).agg(
        F.sum("amount")).first()[0]
    assert total == Decimal("0.30")


@pytest.mark.integration
def test_content_hash_covers_all_fields(result: dict[str, Any]) -> None:
    hashes = [r["content_hash"] for r in result["curated"].values()]
    assert len(set(hashes)) == len(hashes) and all(len(h) == 64 for h in hashes)


@pytest.mark.integration
def test_wrong_csv_header_is_an_error(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("txn_id,account,card,amount\nt1,a,b,c\n")
    with pytest.raises(CsvHeaderError, match=r"x\.csv: line 1: the CSV header must be"):
        ingest_transactions(spark, CFG, [Location(str(tmp_path))], KEY)
    (tmp_path / "x.csv").write_text("\n \n")  # blank only: no header, no records
    res = ingest_transactions(spark, CFG, [Location(str(tmp_path))], KEY)
    assert res.n_input == 0 and res.curated.count() == 0 and res.quarantine.count() == 0


# ------------------------------------------------------------- Spark: HMAC and Luhn


@pytest.mark.integration
@pytest.mark.parametrize("key", [b"k", bytes(range(64)), b"x" * 100, "ключ".encode()],
                         ids=["short", "one-block", "longer-than-block", "utf8"])
def test_hmac_matches_python(spark: Any, key: bytes) -> None:
    from pyspark.sql import functions as F

    rng = random.Random(7)
    messages = ["", "a", "card:4111111111111111", "é✓ unicode", *(
        "".join(rng.choice("0123456789abcdef -") for _ in range(rng.randint(1, 150)))
        for _ in range(40))]
    df = with_hmac_key(spark.createDataFrame([(m,) for m in messages], "m string"), key)
    got = dict(df.select("m", hmac_sha256_hex(F.col("m"), F.col("_ipad"), F.col("_opad"))
                         ).collect())
    assert got == {m: hmac.new(key, m.encode(), hashlib.sha256).hexdigest() for m in messages}


@pytest.mark.integration
def test_luhn_matches_python_reference(spark: Any) -> None:
    from pyspark.sql import functions as F

    rng = random.Random(11)
    numbers = ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 19)))
               for _ in range(1500)]
    numbers += [with_check_digit(n[:-1]) for n in numbers[:500] if len(n) > 1]
    df = spark.createDataFrame([(n,) for n in numbers], "n string")
    got = dict(df.select("n", luhn_valid(F.col("n"))).collect())
    assert got == {n: luhn_ref(n) for n in numbers}
    assert sum(got.values()) > 500  # both outcomes well represented


# ------------------------------------------------------ Spark: written outputs


def _write(res: Any, out: Path) -> list[Path]:
    from pipeline.spark_io import write_parquet

    write_parquet(res.curated, Location(str(out / "curated")), ["txn_id", "source"], 2)
    write_parquet(res.quarantine, Location(str(out / "quarantine")), ["source", "reason"], 1)
    return sorted(out.rglob("*.parquet"))


def _assert_no_leak(files: list[Path], secrets: set[str]) -> None:
    """Grep the file bytes (footer statistics are stored uncompressed) and every decoded
    value (pages are zstd-compressed) for each secret string."""
    assert files
    for path in files:
        blob = path.read_bytes()
        values = [str(v) for col in pq.read_table(path).columns for v in col.to_pylist()]
        text = "\n".join(values)
        for s in secrets:
            assert s.encode() not in blob, f"{s!r} in the bytes of {path}"
            assert s not in text, f"{s!r} in a value of {path}"


@pytest.mark.integration
def test_no_card_or_account_in_written_parquet(result: dict[str, Any], planted: Dataset,
                                               tmp_path: Path) -> None:
    files = _write(result["res"], tmp_path)
    cards = {p.card for p in planted.planted if len(p.card) >= 4}
    cards |= {"".join(ch for ch in c if ch.isdigit()) for c in cards} - {""}
    _assert_no_leak(files, cards | {"acct-1", "acct-"})


@pytest.mark.integration
def test_deterministic_and_location_independent(spark: Any, result: dict[str, Any],
                                                planted: Dataset, tmp_path: Path) -> None:
    first = _write(result["res"], tmp_path / "one")
    again = ingest_transactions(spark, CFG, [Location(str(planted.root))], KEY)
    second = _write(again, tmp_path / "two")
    assert [p.relative_to(tmp_path / "one") for p in first] == [
        p.relative_to(tmp_path / "two") for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(planted.root, moved)
    res = ingest_transactions(spark, CFG, [Location(to_url(moved))], KEY)
    base, other = to_url(planted.root), to_url(moved)

    def rows(df: Any, prefix: str) -> set[tuple[Any, ...]]:
        return {tuple(r.asDict()[c] if c != "source" else r["source"].removeprefix(prefix)
                      for c in df.columns) for r in df.collect()}

    assert rows(res.curated, other) == rows(result["res"].curated, base)
    assert rows(res.quarantine, other) == rows(result["res"].quarantine, base)


# ------------------------------------------------------------------- Spark: synth data


@pytest.mark.integration
def test_synth_ground_truth(spark: Any, tmp_path: Path) -> None:
    synth = pytest.importorskip("pipeline.synth")
    gt = synth.generate(tmp_path / "raw", scale=0.1, seed=0, modalities=("transactions",))
    res = ingest_transactions(spark, CFG, [Location(str(tmp_path / "raw" / "transactions"))],
                              KEY)
    quarantine = {r["source"]: r["reason"] for r in res.quarantine.collect()}
    root = to_url(tmp_path / "raw")
    expected = {f"{root}/{b.file}:{b.line}": b.reason for b in gt.bad_for("transactions")}
    assert quarantine == expected  # every planted bad row, and nothing good
    n_curated = res.curated.count()
    assert res.n_input == gt.n_records["transactions"] == n_curated + len(quarantine)
    assert n_curated == gt.n_good["transactions"]
    # Label conflicts are good rows at ingest: dedup resolves them.
    conflicts = {f"{root}/{d.copy_file}:{d.copy_line}"
                 for d in gt.duplicates_for("transactions", "label_conflict")}
    assert conflicts and not conflicts & set(quarantine)
    files = _write(res, tmp_path / "out")
    _assert_no_leak(files, set(gt.card_numbers))
