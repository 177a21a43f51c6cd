"""Small tables of the four shapes real users bring (issue: "your own data"), generated
in the tests: an anonymized card-fraud table, a credit-default table, a `;`-separated bank
statement and a whitespace-separated headerless purchase log.

Each `write_*` writes one file under `root` and returns what the pipeline should find:
rows, positives (None without a label) and planted exact duplicates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Written:
    path: Path
    rows: int
    positives: int | None
    duplicates: int = 0


def write_card_fraud(root: Path, n: int = 600, seed: int = 0) -> Written:
    """Time (seconds from the first row), V1..V28, Amount (some 0.00), Class (quoted)."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 28))
    logit = 2.5 * v[:, 0] - 2.0 * v[:, 1] - 4.0
    fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    fraud[:6] = True  # enough positives in every split of a tiny table
    amount = np.round(np.exp(rng.normal(3.0, 1.2, n)), 2)
    amount[::50] = 0.0
    t = np.sort(rng.integers(0, 2 * 86_400, n)).astype(float)
    t[0] = 0.0
    header = ",".join(f'"{c}"' for c in ("Time", *(f"V{i}" for i in range(1, 29)),
                                         "Amount", "Class"))
    lines = [header]
    for i in range(n):
        lines.append(",".join([f"{t[i]:.1f}", *(f"{x:.6f}" for x in v[i]),
                               f"{amount[i]:.2f}", f'"{int(fraud[i])}"']))
    path = root / "creditcard.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return Written(path, n, int(fraud.sum()))


def write_credit_default(root: Path, n: int = 500, seed: int = 1) -> Written:
    """ID, 23 numeric columns, default.payment.next.month (about 22% positive)."""
    rng = np.random.default_rng(seed)
    limit = rng.integers(1, 50, n) * 10_000
    sex, edu, mar = rng.integers(1, 3, n), rng.integers(1, 5, n), rng.integers(1, 4, n)
    age = rng.integers(21, 70, n)
    pay = rng.integers(-2, 4, (n, 6))
    bill = rng.integers(0, 200_000, (n, 6))
    paid = rng.integers(0, 20_000, (n, 6))
    logit = 0.9 * pay[:, 0] - 1.6
    default = rng.random(n) < 1 / (1 + np.exp(-logit))
    names = ["ID", "LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY_0",
             *(f"PAY_{i}" for i in range(2, 7)), *(f"BILL_AMT{i}" for i in range(1, 7)),
             *(f"PAY_AMT{i}" for i in range(1, 7)), "default.payment.next.month"]
    lines = [",".join(names)]
    for i in range(n):
        lines.append(",".join(str(x) for x in (
            i + 1, limit[i], sex[i], edu[i], mar[i], age[i], *pay[i], *bill[i], *paid[i],
            int(default[i]))))
    path = root / "default_of_credit_card_clients.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return Written(path, n, int(default.sum()))


def write_bank_statement(root: Path, n: int = 300, seed: int = 2) -> Written:
    """`;`-separated, quoted strings, YYMMDD dates from 1993 on, empty fields; no card,
    no currency, no label."""
    rng = np.random.default_rng(seed)
    lines = ['"trans_id";"account_id";"date";"type";"operation";"amount";"balance";"k_symbol"']
    kinds = ["PRIJEM", "VYDAJ"]
    ops = ["VKLAD", "PREVOD Z UCTU", "VYBER", ""]
    syms = ["", "POJISTNE", "SIPO", "UROK", ""]
    balance = 1000.0
    for i in range(n):
        year = 93 + int(rng.integers(0, 6)) if i % 7 else 0  # some 2000 dates (yy 00)
        date = f"{year % 100:02d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        amount = round(float(rng.integers(100, 50_000)) / 10, 1)
        balance += amount
        lines.append(";".join([
            str(695_247 + i), str(int(rng.integers(1, 40))), date,
            f'"{kinds[i % 2]}"', f'"{ops[i % 4]}"', f"{amount:.1f}", f"{balance:.1f}",
            f'"{syms[i % 5]}"']))
    path = root / "trans.asc"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return Written(path, n, None)


def write_purchase_log(root: Path, n: int = 300, dups: int = 12, seed: int = 3) -> Written:
    """Whitespace-separated, no header: customer id, YYYYMMDD, quantity, dollar amount;
    `dups` rows repeated exactly (natural duplicates)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n - dups):
        customer = f"{int(rng.integers(1, 60)):05d}"
        date = f"1997{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
        rows.append(f"{customer} {date} {int(rng.integers(1, 6)):>3}  "
                    f"{rng.integers(100, 20_000) / 100:.2f}")
    for i in range(dups):
        rows.insert(3 * i + 1, rows[3 * i])
    path = root / "purchases.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("  " + r for r in rows) + "\n")
    return Written(path, n, None, dups)
