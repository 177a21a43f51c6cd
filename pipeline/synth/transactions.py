"""Synthetic card transactions: CSV and JSONL shards with a learnable fraud signal.

Rows are generated column-wise with numpy. `is_fraud` is drawn from a logistic model of
night-time, amount, risky merchant category, velocity bursts and foreign use, so a classifier
can learn it but not read it off one column. Planted duplicates and bad rows are listed in the
ground truth; every bad row carries exactly one defect, so its quarantine reason is certain.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.synth.common import (
    BadRecord,
    GroundTruth,
    ModalityResult,
    PlantedDuplicate,
    modality_rng,
    rel,
    scaled,
)

GT = GroundTruth
HEADER: tuple[str, ...] = ("txn_id", "account", "card_number", "amount", "currency",
                           "timestamp", "merchant", "mcc", "country", "is_fraud")
# code, currency, UTC offsets of its merchants, share of accounts
COUNTRIES: tuple[tuple[str, str, tuple[str, ...], float], ...] = (
    ("US", "USD", ("-05:00", "-06:00", "-08:00"), 0.30), ("CA", "CAD", ("-05:00", "-08:00"), 0.06),
    ("GB", "GBP", ("Z", "+00:00"), 0.12), ("DE", "EUR", ("+01:00",), 0.12),
    ("FR", "EUR", ("+01:00",), 0.08), ("ES", "EUR", ("+01:00",), 0.05),
    ("IT", "EUR", ("+01:00",), 0.05), ("NL", "EUR", ("+01:00",), 0.04),
    ("CH", "CHF", ("+01:00",), 0.04), ("SE", "SEK", ("+01:00",), 0.04),
    ("JP", "JPY", ("+09:00",), 0.06), ("AU", "AUD", ("+10:00", "+08:00"), 0.04),
)
CURRENCIES: tuple[str, ...] = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK")
_PER_USD = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 150.0, "CHF": 0.88, "CAD": 1.36,
            "AUD": 1.52, "SEK": 10.5}
ZERO_DECIMAL = frozenset({"JPY"})
# mcc, merchant name suffixes, share of merchants, median amount in USD, log-sigma
MCCS: tuple[tuple[str, tuple[str, ...], float, float, float], ...] = (
    ("5411", ("Market", "Grocery", "Foods", "Supermarket"), 0.22, 35, 0.7),
    ("5812", ("Bistro", "Grill", "Kitchen", "Cafe"), 0.16, 28, 0.6),
    ("5814", ("Burger", "Pizza", "Express"), 0.08, 12, 0.5),
    ("5541", ("Fuel", "Gas", "Petrol"), 0.08, 45, 0.4),
    ("5999", ("Shop", "Store", "Goods"), 0.10, 40, 0.9),
    ("5311", ("Department Store", "Outlet"), 0.05, 80, 0.8),
    ("5912", ("Pharmacy", "Drugstore"), 0.05, 20, 0.6),
    ("4111", ("Transit", "Metro", "Rail"), 0.05, 4, 0.5),
    ("4121", ("Taxi", "Rides"), 0.04, 22, 0.5),
    ("7011", ("Hotel", "Inn", "Suites"), 0.03, 180, 0.6),
    ("4511", ("Airways", "Air"), 0.02, 350, 0.6),
    ("5732", ("Electronics", "Tech", "Digital"), 0.05, 250, 0.8),
    ("4829", ("Money Transfer", "Remit", "Wire"), 0.02, 400, 1.0),
    ("7995", ("Casino", "Bet", "Gaming"), 0.02, 80, 1.0),
)
RISKY_MCCS = frozenset({"4829", "7995", "5732"})
_PREFIXES = ("Blue", "Golden", "Corner", "City", "North", "Sunrise", "Royal", "Green", "Silver",
             "Metro", "Harbor", "Oak", "Maple", "Star", "Prime", "Lucky", "Urban", "Coastal",
             "Alpine", "River", "Westside", "Old Town", "Union", "Liberty")
START_LOCAL = np.datetime64("2026-01-05T00:00:00", "s")
DAYS = 90
FRAUD_RATE = 0.015
# Relative frequency of each local hour: quiet at night, busy from morning to evening.
_HOURLY = np.array([3, 2, 1, 1, 1, 2, 4, 7, 10, 12, 12, 13, 14, 13, 12, 12, 13, 14, 15, 14, 12,
                    10, 8, 5], dtype=np.float64)

_BAD_AMOUNTS = ("12,50€", "abc", "N/A", "1.2.3", "12.5O")
_OUT_OF_RANGE = ("-5.00", "0.00", "99999999999.99", "-0.01", "25000000.00")
_OUT_OF_RANGE_JPY = ("-500", "0", "99999999999", "-1", "25000000")
_BAD_TIMESTAMPS = ("31/02/2026 25:61", "yesterday", "2026-02-30T10:00:00Z",
                   "2026-03-04T25:61:00+02:00", "not a date", "2026-13-01T00:00:00Z")
_BAD_CURRENCIES = ("XYZ", "BTC", "ABC", "EURO")
_MISSABLE = ("account", "currency", "timestamp")
_BAD_REASONS = (GT.MALFORMED_ROW, GT.MISSING_FIELD, GT.BAD_AMOUNT, GT.AMOUNT_OUT_OF_RANGE,
                GT.BAD_TIMESTAMP, GT.UNKNOWN_CURRENCY, GT.BAD_CARD)
_COL = {name: i for i, name in enumerate(HEADER)}
_SHIFT_S = {GT.REPLAY: (3600, 12 * 3600), GT.RETRY: (2, 61)}  # how much later a copy is


def luhn_valid(number: str) -> bool:
    """True when `number` is all digits and passes the Luhn checksum."""
    if not number.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_numbers(rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct Luhn-valid 16-digit numbers with Visa (4...) or Mastercard (51-55) BINs."""
    digits = rng.integers(0, 10, size=(n, 15))
    visa = rng.random(n) < 0.6
    digits[:, 0] = np.where(visa, 4, 5)
    digits[:, 1] = np.where(visa, digits[:, 1], rng.integers(1, 6, size=n))
    # The check digit's right neighbour-in-payload is doubled: columns 14, 12, ... from left.
    doubled = (np.arange(15) % 2) == 0
    d2 = digits * 2
    d2 = np.where(d2 > 9, d2 - 9, d2)
    check = (10 - np.where(doubled, d2, digits).sum(axis=1) % 10) % 10
    full = np.concatenate([digits, check[:, None]], axis=1)
    out = ["".join(map(str, row)) for row in full.tolist()]
    # A collision among 10^14 payloads is astronomically rare; redrawing keeps it simple.
    return out if len(set(out)) == n else card_numbers(rng, n)


def _merchants(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray, np.ndarray,
                                                          np.ndarray]:
    """Names, mcc index, country index and offset index of `n` merchants, sorted by country."""
    n_c = len(COUNTRIES)
    weights = np.array([c[3] for c in COUNTRIES])
    country = np.concatenate([np.repeat(np.arange(n_c), 4),  # every country gets a few
                              rng.choice(n_c, size=n - 4 * n_c, p=weights / weights.sum())])
    country.sort(kind="stable")
    shares = np.array([m[2] for m in MCCS])
    mcc = rng.choice(len(MCCS), size=n, p=shares / shares.sum())
    offset = np.array([int(rng.integers(len(COUNTRIES[c][2]))) for c in country])
    names: list[str] = []
    used: dict[str, int] = {}
    for m in mcc.tolist():
        suffixes = MCCS[m][1]
        base = f"{_PREFIXES[int(rng.integers(len(_PREFIXES)))]} " \
               f"{suffixes[int(rng.integers(len(suffixes)))]}"
        used[base] = used.get(base, 0) + 1
        names.append(base if used[base] == 1 else f"{base} {used[base]}")
    return names, mcc, country, offset


def _timestamps(local: np.ndarray, offsets: np.ndarray) -> list[str]:
    wall = np.datetime_as_string(START_LOCAL + local.astype("timedelta64[s]"), unit="s")
    return [w + o for w, o in zip(wall.tolist(), offsets.tolist(), strict=True)]


def _offset_seconds(text: str) -> int:
    sign = -1 if text[0] == "-" else 1
    return 0 if text == "Z" else sign * (int(text[1:3]) * 3600 + int(text[4:6]) * 60)


def _amount_str(minor: int, currency: str) -> str:
    return str(minor) if currency in ZERO_DECIMAL else f"{minor // 100}.{minor % 100:02d}"


def _fraud(rng: np.random.Generator, features: Sequence[np.ndarray],
           weights: Sequence[float]) -> np.ndarray:
    """Bernoulli draws from a logistic model whose intercept gives a FRAUD_RATE mean."""
    z = np.sum([w * f for w, f in zip(weights, features, strict=True)], axis=0)
    lo, hi = -20.0, 5.0
    for _ in range(40):  # bisection: the mean probability rises with the intercept
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if float(np.mean(1 / (1 + np.exp(-(z + mid))))) > FRAUD_RATE else (
            mid, hi)
    return rng.random(z.shape[0]) < 1 / (1 + np.exp(-(z + lo)))


def _base_rows(rng: np.random.Generator, n: int, n_acc: int, seed: int) -> list[list[str]]:
    """`n` valid rows in timestamp order, as columns of strings (txn ids in time order)."""
    n_c = len(COUNTRIES)
    acc_weight = rng.lognormal(0.0, 0.8, size=n_acc)
    shares = np.array([c[3] for c in COUNTRIES])
    home = rng.choice(n_c, size=n_acc, p=shares / shares.sum())
    cards = np.array(card_numbers(rng, n_acc), dtype=object)
    accounts = np.array([f"acct-{seed}-{j:06d}" for j in range(n_acc)], dtype=object)
    names, m_mcc, m_country, m_offset = _merchants(rng, max(60, scaled(300, math.sqrt(n / 1e4))))

    # Velocity bursts: a few rows on one account within minutes, in one country.
    n_bursts = max(2, round(0.03 * n / 4.5))
    sizes = rng.integers(3, 7, size=n_bursts)
    n_single = n - int(sizes.sum())
    burst_of = np.repeat(np.arange(n_bursts), sizes)
    acc = np.concatenate([rng.choice(n_acc, size=n_single, p=acc_weight / acc_weight.sum()),
                          rng.integers(n_acc, size=n_bursts)[burst_of]])
    away = np.concatenate([rng.random(n_single) < 0.07, (rng.random(n_bursts) < 0.3)[burst_of]])
    other = (home[acc] + rng.integers(1, n_c, size=n)) % n_c
    country = np.where(away, other, home[acc])
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + n_single
    country[n_single:] = country[first[burst_of]]  # a burst stays in one country
    hours = rng.choice(24, size=n, p=_HOURLY / _HOURLY.sum())
    local = rng.integers(0, DAYS, size=n) * 86400 + hours * 3600 + rng.integers(0, 3600, size=n)
    gaps = rng.integers(20, 241, size=n - n_single)
    gaps[np.concatenate([[0], np.cumsum(sizes)[:-1]])] = 0
    within = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[np.cumsum(sizes) - sizes], sizes)
    local[n_single:] = local[first[burst_of]] + within
    burst = np.arange(n) >= n_single

    counts = np.bincount(m_country, minlength=n_c)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    merch = starts[country] + (rng.random(n) * counts[country]).astype(np.int64)
    mcc_idx = m_mcc[merch]
    med = np.array([m[3] for m in MCCS])[mcc_idx]
    sig = np.array([m[4] for m in MCCS])[mcc_idx]
    usd = np.clip(med * np.exp(sig * rng.standard_normal(n)), 0.5, 20_000)
    local_cur = np.array([CURRENCIES.index(c[1]) for c in COUNTRIES])[country]
    cur = np.where(rng.random(n) < 0.95, local_cur, CURRENCIES.index("USD"))
    rate = np.array([_PER_USD[c] for c in CURRENCIES])[cur]
    decimals = np.array([c in ZERO_DECIMAL for c in CURRENCIES])[cur]
    minor = np.maximum(1, np.round(usd * rate * np.where(decimals, 1, 100))).astype(np.int64)

    off_str = np.array([COUNTRIES[c][2][o] for c, o in zip(m_country, m_offset, strict=True)],
                       dtype=object)
    off_sec = np.array([_offset_seconds(s) for s in off_str])[merch]
    log_usd = np.log(usd)
    risky = np.array([MCCS[m][0] in RISKY_MCCS for m in range(len(MCCS))])[mcc_idx]
    fraud = _fraud(rng, [hours <= 5, (log_usd - log_usd.mean()) / log_usd.std(), risky, burst,
                         away], [1.5, 0.9, 1.4, 2.0, 1.6])

    ix = np.argsort(local - off_sec, kind="stable")  # UTC order
    acc, merch, cur, minor, fraud, local = (x[ix] for x in (acc, merch, cur, minor, fraud, local))
    cur_names = [CURRENCIES[c] for c in cur.tolist()]
    mcc_codes = np.array([MCCS[m][0] for m in m_mcc.tolist()], dtype=object)
    country_codes = np.array([c[0] for c in COUNTRIES], dtype=object)
    return [
        [f"txn-{seed}-{k:08d}" for k in range(n)],
        accounts[acc].tolist(),
        cards[acc].tolist(),
        [_amount_str(m, c) for m, c in zip(minor.tolist(), cur_names, strict=True)],
        cur_names,
        _timestamps(local, off_str[merch]),
        np.array(names, dtype=object)[merch].tolist(),
        mcc_codes[merch].tolist(),
        country_codes[m_country[merch]].tolist(),
        ["1" if f else "0" for f in fraud.tolist()],
    ]


def _shift(ts: str, seconds: int) -> str:
    """`ts` (as written by `_timestamps`) moved by `seconds`, keeping its offset."""
    wall = np.datetime64(ts[:19], "s") + np.timedelta64(seconds, "s")
    return str(wall) + ts[19:]


def _csv_line(values: Sequence[str]) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n\r') else v

    return ",".join(quote(v) for v in values)


def _json_line(values: Sequence[str | None], drop: str = "") -> str:
    obj: dict[str, str | int | None] = {
        k: v for k, v in zip(HEADER, values, strict=True) if k != drop}
    if "is_fraud" in obj:
        obj["is_fraud"] = int(values[_COL["is_fraud"]] or 0)
    return json.dumps(obj, ensure_ascii=False)


@dataclass(slots=True)
class _Row:
    """A planted row: its values (None = absent/null), or a raw line written instead."""

    values: list[str | None]
    reason: str = ""
    detail: str = ""
    raw: str | None = None
    dest: str | None = None  # "csv"/"jsonl" when the defect only exists in one format
    drop: str = ""  # JSON key left out entirely


def _defect(rng: np.random.Generator, row: _Row, j: int) -> _Row:
    """Give `row` the j-th variant of its reason's defect, and nothing else."""
    v, reason = row.values, row.reason
    if reason == GT.MALFORMED_ROW:
        kind = j % 4
        if kind < 2:
            fields = [x or "" for x in v]
            fields = fields[:6] + fields[7:] if kind == 0 else [*fields, "EXTRA"]
            row.raw, row.dest = _csv_line(fields), "csv"
            row.detail = f"{len(fields)} columns instead of {len(HEADER)}"
        else:
            full = _json_line(v)
            if kind == 2:  # cut after the card number, so every written card is whole
                lo = full.index(str(v[_COL["card_number"]])) + 17
                row.raw = full[: int(rng.integers(lo, len(full) - 1))]
                row.detail = "truncated JSON object"
            else:
                row.raw, row.detail = full + (" }", ",", " garbage")[j % 3], "trailing garbage"
            row.dest = "jsonl"
    elif reason == GT.MISSING_FIELD:
        field = _MISSABLE[j % len(_MISSABLE)]
        v[_COL[field]] = None
        if (j // len(_MISSABLE)) % 2 == 0:
            row.drop = field
        row.detail = f"{field} missing"
    elif reason == GT.BAD_AMOUNT:
        v[_COL["amount"]] = _BAD_AMOUNTS[j % len(_BAD_AMOUNTS)]
    elif reason == GT.AMOUNT_OUT_OF_RANGE:
        table = _OUT_OF_RANGE_JPY if v[_COL["currency"]] in ZERO_DECIMAL else _OUT_OF_RANGE
        v[_COL["amount"]] = table[j % len(table)]
    elif reason == GT.BAD_TIMESTAMP:
        v[_COL["timestamp"]] = _BAD_TIMESTAMPS[j % len(_BAD_TIMESTAMPS)]
    elif reason == GT.UNKNOWN_CURRENCY:
        v[_COL["currency"]] = _BAD_CURRENCIES[j % len(_BAD_CURRENCIES)]
    elif reason == GT.BAD_CARD:
        card = str(v[_COL["card_number"]])
        bad = (card[:-1] + str((int(card[-1]) + 5) % 10),  # fails Luhn
               card[:6] + "XXXXXX" + card[12:],  # masked, as some exports write it
               card[:8] + "O" + card[9:])  # letter O for a digit
        v[_COL["card_number"]] = bad[j % len(bad)]
    changed = {GT.BAD_AMOUNT: "amount", GT.AMOUNT_OUT_OF_RANGE: "amount",
               GT.BAD_TIMESTAMP: "timestamp", GT.UNKNOWN_CURRENCY: "currency",
               GT.BAD_CARD: "card_number"}.get(reason)
    if changed is not None:
        row.detail = f"{changed}={v[_COL[changed]]!r}"
    return row


def generate_transactions(out_dir: pathlib.Path, scale: float, seed: int) -> ModalityResult:
    """Write `out_dir/transactions/` and return what was planted there."""
    rng = modality_rng(seed, "transactions")
    root = out_dir / "transactions"
    root.mkdir(parents=True, exist_ok=True)
    n_total = scaled(10_000, scale, 1000)
    n_copies = {GT.EXACT: scaled(60, scale, 3), GT.REPLAY: scaled(30, scale, 3),
                GT.RETRY: scaled(30, scale, 3), GT.LABEL_CONFLICT_KIND: scaled(20, scale, 3)}
    n_bad_each = scaled(20, scale, 4)
    n_gen = n_total - sum(n_copies.values())
    cols = _base_rows(rng, n_gen, scaled(500, scale, 50), seed)

    def values(i: int) -> list[str | None]:
        return [c[i] for c in cols]
    picks = rng.choice(n_gen, size=n_bad_each * len(_BAD_REASONS) + sum(n_copies.values()),
                       replace=False).tolist()
    special: dict[int, _Row] = {}
    for j, i in enumerate(picks[: n_bad_each * len(_BAD_REASONS)]):
        special[i] = _defect(rng, _Row(values(i), _BAD_REASONS[j // n_bad_each]), j % n_bad_each)

    copies: list[tuple[int, str, _Row]] = []
    srcs = iter(picks[n_bad_each * len(_BAD_REASONS):])
    for kind, count in n_copies.items():
        for _ in range(count):
            src = next(srcs)
            row = _Row(values(src), detail="same row")
            v = row.values
            if kind in _SHIFT_S:
                dt = int(rng.integers(*_SHIFT_S[kind]))
                v[_COL["timestamp"]] = _shift(str(v[_COL["timestamp"]]), dt)
                row.detail = f"timestamp +{dt} s"
            if kind == GT.RETRY:
                v[_COL["txn_id"]] = f"txn-{seed}-{n_gen + len(copies):08d}"
            elif kind == GT.LABEL_CONFLICT_KIND:
                v[_COL["is_fraud"]] = "0" if v[_COL["is_fraud"]] == "1" else "1"
                row.detail = f"is_fraud {v[_COL['is_fraud']]} instead of the original's"
            copies.append((src, kind, row))

    n_all = n_gen + len(copies)
    to_jsonl = rng.random(n_all) < 0.2
    for i, row in special.items():
        to_jsonl[i] = to_jsonl[i] if row.dest is None else row.dest == "jsonl"
    # A copy lands shortly after its original in the stream, often in another shard.
    key = np.arange(n_all, dtype=np.float64)
    key[n_gen:] = [src + float(rng.uniform(0.5, 0.05 * n_gen)) for src, _, _ in copies]
    planted = {**special, **{n_gen + k: c[2] for k, c in enumerate(copies)}}

    order = np.argsort(key, kind="stable")
    csv_idx, json_idx = order[~to_jsonl[order]], order[to_jsonl[order]]
    n_csv_shards = max(2, math.ceil(len(csv_idx) / 200_000))
    n_json_shards = max(1, math.ceil(len(json_idx) / 200_000))
    file_of, line_of = np.zeros(n_all, dtype=np.int64), np.zeros(n_all, dtype=np.int64)
    files: list[str] = []
    for s, chunk in enumerate(np.array_split(csv_idx, n_csv_shards)):
        path = root / f"part-{s:03d}.csv"
        lines = [",".join(HEADER)]
        for i in chunk.tolist():
            p = planted.get(i)
            lines.append(",".join(c[i] for c in cols) if p is None
                         else p.raw or _csv_line([x or "" for x in p.values]))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        file_of[chunk], line_of[chunk] = len(files), np.arange(2, len(chunk) + 2)
        files.append(rel(path, out_dir))
    for s, chunk in enumerate(np.array_split(json_idx, n_json_shards)):
        path = root / f"part-{n_csv_shards + s:03d}.jsonl"
        lines = []
        for i in chunk.tolist():
            p = planted.get(i)
            lines.append(_json_line(values(i)) if p is None
                         else p.raw or _json_line(p.values, p.drop))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        file_of[chunk], line_of[chunk] = len(files), np.arange(1, len(chunk) + 1)
        files.append(rel(path, out_dir))

    result = ModalityResult(n_records=n_all)
    for i, row in sorted(special.items()):
        result.bad.append(BadRecord("transactions", files[file_of[i]], int(line_of[i]),
                                    row.reason, row.detail, cols[0][i]))
    result.bad.sort(key=lambda b: (b.file, b.line or 0))
    for k, (src, kind, row) in enumerate(copies):
        c = n_gen + k
        result.duplicates.append(PlantedDuplicate(
            "transactions", kind, files[file_of[src]], int(line_of[src]), cols[0][src],
            files[file_of[c]], int(line_of[c]), str(row.values[0]), detail=row.detail))
    written = {card for i, card in enumerate(cols[2]) if i not in special}
    written.update(str(r.values[_COL["card_number"]]) for r in planted.values())
    result.card_numbers = sorted(written)
    return result
