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
_BAD_TIMESTAMPS = ("31/02/2026 25:61", "yesterday", "2026-02-30T10:00:00Z",
                   "2026-03-04T25:61:00+02:00", "not a date", "2026-13-01T00:00:00Z")
_BAD_CURRENCIES = ("XYZ", "BTC", "ABC", "EURO")
_MISSABLE = ("account", "currency", "timestamp")
_BAD_REASONS = (GT.MALFORMED_ROW, GT.MISSING_FIELD, GT.BAD_AMOUNT, GT.AMOUNT_OUT_OF_RANGE,
                GT.BAD_TIMESTAMP, GT.UNKNOWN_CURRENCY, GT.BAD_CARD)
_COL = {name: i for i, name in enumerate(HEADER)}


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
    if len(set(out)) < n:  # astronomically rare; resolve by redrawing the colliding tail
        seen: set[str] = set()
        for i, c in enumerate(out):
            while c in seen:
                c = card_numbers(rng, 1)[0]
            seen.add(c)
            out[i] = c
    return out


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
    return [w + o for w, o in zip(wall.tolist(), offsets.tolist())]


def _offset_seconds(text: str) -> int:
    if text == "Z":
        return 0
    sign = -1 if text[0] == "-" else 1
    return sign * (int(text[1:3]) * 3600 + int(text[4:6]) * 60)


def _amount_str(minor: int, currency: str) -> str:
    return str(minor) if currency in ZERO_DECIMAL else f"{minor // 100}.{minor % 100:02d}"


def _fraud(rng: np.random.Generator, features: Sequence[np.ndarray],
           weights: Sequence[float]) -> np.ndarray:
    """Bernoulli draws from a logistic model whose intercept gives a FRAUD_RATE mean."""
    z = sum(w * f for w, f in zip(weights, features))
    assert isinstance(z, np.ndarray)
    lo, hi = -20.0, 5.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if float(np.mean(1 / (1 + np.exp(-(z + mid))))) > FRAUD_RATE:
            hi = mid
        else:
            lo = mid
    return rng.random(z.shape[0]) < 1 / (1 + np.exp(-(z + lo)))


def _base_rows(rng: np.random.Generator, n: int, n_acc: int, seed: int) -> list[list[str]]:
    """`n` valid rows in timestamp order, as columns of strings (txn ids in time order)."""
    n_c = len(COUNTRIES)
    acc_weight = rng.lognormal(0.0, 0.8, size=n_acc)
    home = rng.choice(n_c, size=n_acc, p=np.array([c[3] for c in COUNTRIES]) / 1.0)
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
    if n_bursts:  # a burst stays in the country of its first row
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + n_single
        country[n_single:] = country[first[burst_of]]
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

    off_str = np.array([COUNTRIES[c][2][o] for c, o in zip(m_country, m_offset)], dtype=object)
    off_sec = np.array([_offset_seconds(s) for s in off_str])[merch]
    log_usd = np.log(usd)
    risky = np.array([MCCS[m][0] in RISKY_MCCS for m in range(len(MCCS))])[mcc_idx]
    fraud = _fraud(rng, [hours <= 5, (log_usd - log_usd.mean()) / log_usd.std(), risky, burst,
                         away], [1.5, 0.9, 1.4, 2.0, 1.6])

    order = np.argsort(local - off_sec[np.arange(n)] * 0 - off_sec, kind="stable")
    acc, merch, cur, minor, fraud = acc[order], merch[order], cur[order], minor[order], fraud[order]
    local = local[order]
    cur_names = [CURRENCIES[c] for c in cur.tolist()]
    mcc_codes = np.array([MCCS[m][0] for m in m_mcc.tolist()], dtype=object)
    country_codes = np.array([c[0] for c in COUNTRIES], dtype=object)
    return [
        [f"txn-{seed}-{k:08d}" for k in range(n)],
        accounts[acc].tolist(),
        cards[acc].tolist(),
        [_amount_str(m, c) for m, c in zip(minor.tolist(), cur_names)],
        cur_names,
        _timestamps(local, off_str[merch]),
        np.array(names, dtype=object)[merch].tolist(),
        mcc_codes[merch].tolist(),
        country_codes[m_country[merch]].tolist(),
        ["1" if f else "0" for f in fraud.tolist()],
    ]


def _shift(ts: str, seconds: int) -> str:
    """`ts` (as written by `_timestamps`) moved by `seconds`, keeping its offset."""
    cut = 19
    wall = np.datetime64(ts[:cut], "s") + np.timedelta64(seconds, "s")
    return str(wall) + ts[cut:]


def _csv_line(values: Sequence[str]) -> str:
    def quote(v: str) -> str:
        return '"' + v.replace('"', '""') + '"' if any(c in v for c in ',"\n\r') else v

    return ",".join(quote(v) for v in values)


def _json_line(values: Sequence[str | None], drop: str = "") -> str:
    obj: dict[str, str | int | None] = {
        k: v for k, v in zip(HEADER, values) if k != drop
    }
    if "is_fraud" in obj:
        obj["is_fraud"] = int(values[_COL["is_fraud"]] or 0)
    return json.dumps(obj, ensure_ascii=False)
