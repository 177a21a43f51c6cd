"""The sample data generator: determinism, counts, and every planted artifact as recorded.

Each modality has a small reference validator here, written independently of the generator,
so the tests check that every bad record fails for exactly its recorded reason and every
other record passes.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import pathlib
import random
import subprocess
import sys
import unicodedata
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import pytest
from PIL import Image, UnidentifiedImageError

from pipeline.synth import MODALITIES, GroundTruth, generate, luhn_valid
from pipeline.synth.text import NEAR_BINS
from pipeline.synth.transactions import _PER_USD, CURRENCIES, HEADER
from pipeline.textnorm import jaccard, normalize_text, word_shingles

pytestmark = pytest.mark.unit

SCALE = 1.0
REPO = pathlib.Path(__file__).resolve().parents[2]
Key = tuple[str, int | None]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("synth") / "seed0"
    generate(root, scale=SCALE, seed=0)
    return root


@pytest.fixture(scope="module")
def gt(out: pathlib.Path) -> GroundTruth:
    return GroundTruth.from_json(out / "ground_truth.json")


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(data: bytes) -> list[tuple[int, bytes]]:
    """Non-blank lines with their 1-based numbers, as ingest counts records."""
    return [(i, line) for i, line in enumerate(data.split(b"\n"), 1) if line.strip()]


# -- reference readers and validators ----------------------------------------------------

def _text_records(root: pathlib.Path) -> dict[Key, bytes]:
    recs: dict[Key, bytes] = {}
    for p in sorted((root / "text").glob("*.jsonl")):
        for i, line in _lines(p.read_bytes()):
            recs[(p.relative_to(root).as_posix(), i)] = line
    for p in sorted((root / "text" / "txt").glob("*.txt")):
        recs[(p.relative_to(root).as_posix(), None)] = p.read_bytes()
    return recs


def _text_of(key: Key, raw: bytes) -> str | None:
    if key[1] is None:
        return raw.decode("utf-8")
    obj = json.loads(raw.decode("utf-8"))
    return obj.get("text") if isinstance(obj, dict) else None


def _text_reason(key: Key, raw: bytes) -> str | None:
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return GroundTruth.INVALID_UTF8
    if key[1] is None:
        text: Any = decoded
    else:
        try:
            obj = json.loads(decoded)
        except json.JSONDecodeError:
            return GroundTruth.MALFORMED_JSON
        if not isinstance(obj, dict):
            return GroundTruth.MALFORMED_JSON
        text = obj.get("text")
        if not isinstance(text, str):
            return GroundTruth.MISSING_FIELD
    n = len(normalize_text(text))
    if n == 0:
        return GroundTruth.EMPTY_TEXT
    return GroundTruth.TOO_LONG if n > 100_000 else None


def _txn_records(root: pathlib.Path) -> dict[Key, dict[str, str | None] | None]:
    """Parsed rows (None when the row itself is malformed), keyed by (file, line)."""
    recs: dict[Key, dict[str, str | None] | None] = {}
    for p in sorted((root / "transactions").glob("*.csv")):
        lines = p.read_text(encoding="utf-8").split("\n")
        assert lines[0] == ",".join(HEADER)
        for i, line in enumerate(lines[1:], 2):
            if line:
                row = next(csv.reader([line]))
                recs[(p.relative_to(root).as_posix(), i)] = (
                    dict(zip(HEADER, row, strict=True)) if len(row) == len(HEADER) else None)
    for p in sorted((root / "transactions").glob("*.jsonl")):
        for i, raw in _lines(p.read_bytes()):
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError:
                obj = None
            recs[(p.relative_to(root).as_posix(), i)] = (
                {k: None if obj.get(k) is None else str(obj[k]) for k in HEADER}
                if isinstance(obj, dict) else None)
    return recs


def _txn_reason(row: dict[str, str | None] | None) -> str | None:
    if row is None:
        return GroundTruth.MALFORMED_ROW
    if any(not row.get(k) for k in HEADER):
        return GroundTruth.MISSING_FIELD
    amount = str(row["amount"])
    try:
        value = Decimal(amount)
    except InvalidOperation:
        return GroundTruth.BAD_AMOUNT
    if not value.is_finite():
        return GroundTruth.BAD_AMOUNT
    if value <= 0 or value > Decimal(10_000_000):
        return GroundTruth.AMOUNT_OUT_OF_RANGE
    try:
        ts = datetime.fromisoformat(str(row["timestamp"]))
    except ValueError:
        return GroundTruth.BAD_TIMESTAMP
    if ts.tzinfo is None:
        return GroundTruth.BAD_TIMESTAMP
    if row["currency"] not in CURRENCIES:
        return GroundTruth.UNKNOWN_CURRENCY
    if not luhn_valid(str(row["card_number"])):
        return GroundTruth.BAD_CARD
    assert str(row["mcc"]).isdigit() and len(str(row["mcc"])) == 4
    assert row["is_fraud"] in ("0", "1")
    return None


def _image_reason(path: pathlib.Path) -> tuple[str | None, str | None]:
    """(reason, detected format); needs Image.MAX_IMAGE_PIXELS disabled by the caller."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            if im.width * im.height > 16_000_000:
                return GroundTruth.PIXEL_LIMIT, fmt
            try:
                im.load()
            except (OSError, SyntaxError, ValueError):
                return GroundTruth.TRUNCATED_IMAGE, fmt
            return None, fmt
    except UnidentifiedImageError:
        return GroundTruth.UNDECODABLE_IMAGE, None


# -- determinism --------------------------------------------------------------------------

def test_same_seed_gives_byte_identical_files(out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # Another process with another hash seed: set iteration order must not leak into output.
    code = ("import sys; from pipeline.synth import generate; "
            f"generate(sys.argv[1], scale={SCALE}, seed=0)")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "again")], check=True, env=env,
                   cwd=REPO)
    first, second = _files(out), _files(tmp_path / "again")
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []


def test_other_seed_gives_other_data(out: pathlib.Path, tmp_path: pathlib.Path) -> None:
    generate(tmp_path / "seed1", scale=SCALE, seed=1)
    first, other = _files(out), _files(tmp_path / "seed1")
    for name in ("text/part-000.jsonl", "transactions/part-000.csv", "ground_truth.json"):
        assert first[name] != other[name]
    # Drawn images differ; the fixed bad files (an HTML page, huge-header PNGs) may not.
    bad = {b.file for b in GroundTruth.from_json(out / "ground_truth.json").bad}
    images = {v for k, v in first.items() if k.startswith("images/") and k not in bad}
    assert not images & {v for k, v in other.items() if k.startswith("images/")}


def test_one_modality_alone_writes_the_same_files(out: pathlib.Path,
                                                 tmp_path: pathlib.Path) -> None:
    truth = generate(tmp_path / "only", scale=SCALE, seed=0, modalities=["transactions"])
    assert truth.modalities == ["transactions"]
    alone = _files(tmp_path / "only")
    full = _files(out)
    assert {k for k in alone if k != "ground_truth.json"} == {
        k for k in full if k.startswith("transactions/")}
    assert all(full[k] == v for k, v in alone.items() if k != "ground_truth.json")


def test_ground_truth_round_trips(gt: GroundTruth, out: pathlib.Path) -> None:
    assert GroundTruth.from_dict(gt.to_dict()) == gt
    assert gt.to_json() == (out / "ground_truth.json").read_text(encoding="utf-8")
    assert gt.modalities == list(MODALITIES)


def test_rejects_bad_arguments(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown modalities"):
        generate(tmp_path, modalities=["audio"])
    with pytest.raises(ValueError, match="scale"):
        generate(tmp_path, scale=0)


# -- counts -------------------------------------------------------------------------------

def test_counts_match_files(gt: GroundTruth, out: pathlib.Path) -> None:
    images = [p for p in (out / "images").rglob("*") if p.is_file()]
    found = {"text": len(_text_records(out)), "images": len(images),
             "transactions": len(_txn_records(out))}
    assert gt.n_records == found
    for m in MODALITIES:
        assert gt.n_bad[m] == len(gt.bad_for(m))
        assert gt.n_good[m] == gt.n_records[m] - gt.n_bad[m]
    # Base sizes at scale 1 (the documented contract other tests and docs rely on).
    assert gt.n_records == {"text": 1000, "images": 200, "transactions": 10_000}
    txt = list((out / "text" / "txt").glob("*.txt"))
    assert 0.05 < len(txt) / gt.n_records["text"] < 0.2
    assert len(list((out / "text").glob("part-*.jsonl"))) >= 3
    jsonl = sum(1 for k in _txn_records(out) if k[0].endswith(".jsonl"))
    assert 0.15 < jsonl / gt.n_records["transactions"] < 0.25


def test_every_bad_kind_planted_at_least_twice(gt: GroundTruth) -> None:
    for m in MODALITIES:
        counts = Counter(b.reason for b in gt.bad_for(m))
        assert set(counts) == set(GroundTruth.REASONS[m])
        assert min(counts.values()) >= 2, (m, counts)
        rate = gt.n_bad[m] / gt.n_records[m]
        assert 0.005 < rate < 0.05, (m, rate)
    for m, kinds in GroundTruth.DUPLICATE_KINDS.items():
        counts = Counter(d.kind for d in gt.duplicates_for(m))
        assert set(counts) == set(kinds) and min(counts.values()) >= 2, (m, counts)


# -- text ---------------------------------------------------------------------------------

def test_text_records_fail_exactly_as_recorded(gt: GroundTruth, out: pathlib.Path) -> None:
    expected = {(b.file, b.line): b.reason for b in gt.bad_for("text")}
    actual = {k: r for k, raw in _text_records(out).items() if (r := _text_reason(k, raw))}
    assert actual == expected
    # Both shapes of each whole-file defect exist: a .txt file and a JSONL line.
    for reason in (GroundTruth.INVALID_UTF8, GroundTruth.EMPTY_TEXT, GroundTruth.TOO_LONG):
        lines = {b.line is None for b in gt.bad_for("text") if b.reason == reason}
        assert lines == {True, False}, reason


def test_text_ids_are_unique_and_deterministic(out: pathlib.Path) -> None:
    ids = []
    for key, raw in _text_records(out).items():
        if key[1] is None:
            ids.append(pathlib.PurePosixPath(key[0]).stem)
        elif _text_reason(key, raw) in (None, GroundTruth.EMPTY_TEXT, GroundTruth.TOO_LONG):
            ids.append(json.loads(raw)["id"])
    assert len(ids) == len(set(ids))
    assert all(i.startswith("doc-0-") for i in ids)


def test_planted_text_jaccards_are_exact(gt: GroundTruth, out: pathlib.Path) -> None:
    recs = _text_records(out)

    def shingles(file: str, line: int | None) -> set[str]:
        text = _text_of((file, line), recs[(file, line)])
        assert text is not None
        return word_shingles(normalize_text(text), 5)

    near = []
    for d in gt.duplicates_for("text"):
        a, b = shingles(d.original_file, d.original_line), shingles(d.copy_file, d.copy_line)
        assert d.true_jaccard == jaccard(a, b)
        if d.kind.startswith("near_"):
            assert d.true_jaccard < 1.0 and d.target_jaccard is not None
            near.append(d)
    for target in NEAR_BINS:
        hits = [d for d in near if d.target_jaccard == target]
        assert hits and all(abs(float(d.true_jaccard or 0) - target) <= 0.03 for d in hits), target


def test_exact_and_unicode_variants_normalize_identically(gt: GroundTruth,
                                                           out: pathlib.Path) -> None:
    recs = _text_records(out)
    for d in gt.duplicates_for("text"):
        if d.kind not in (GroundTruth.EXACT, GroundTruth.WHITESPACE_UNICODE):
            continue
        first, second = (d.original_file, d.original_line), (d.copy_file, d.copy_line)
        orig, copy = _text_of(first, recs[first]), _text_of(second, recs[second])
        assert orig is not None and copy is not None
        assert normalize_text(orig) == normalize_text(copy)
        assert d.original_id != d.copy_id
        if d.kind == GroundTruth.EXACT:
            assert orig == copy
        else:
            assert orig != copy and unicodedata.is_normalized("NFC", orig)
            assert not unicodedata.is_normalized("NFC", copy)
            assert any(unicodedata.combining(c) for c in copy)
            assert any(c in copy for c in "\t\n\u00a0")


def test_distinct_documents_share_few_shingles(gt: GroundTruth, out: pathlib.Path) -> None:
    planted = {(d.original_file, d.original_line) for d in gt.duplicates} | {
        (d.copy_file, d.copy_line) for d in gt.duplicates}
    bad = {(b.file, b.line) for b in gt.bad}
    docs = [_text_of(k, raw) for k, raw in _text_records(out).items()
            if k not in planted and k not in bad and k[1] is not None]
    sample = random.Random(0).sample([d for d in docs if d], 150)
    sets = [word_shingles(normalize_text(t), 5) for t in sample]
    worst = max(jaccard(a, b) for a, b in itertools.combinations(sets, 2))
    assert worst < 0.3
    assert all(300 <= len(t) <= 3500 for t in sample)


# -- images -------------------------------------------------------------------------------

def test_image_files_fail_exactly_as_recorded(gt: GroundTruth, out: pathlib.Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    expected = {b.file: b.reason for b in gt.bad_for("images")}
    resized = {d.copy_file for d in gt.duplicates_for("images", GroundTruth.RESIZE)}
    formats: Counter[str | None] = Counter()
    modes: Counter[str] = Counter()
    for p in sorted(f for f in (out / "images").rglob("*") if f.is_file()):
        name = p.relative_to(out).as_posix()
        reason, fmt = _image_reason(p)
        assert reason == expected.get(name), name
        if reason is None:
            with Image.open(p) as im:
                formats[fmt] += 1
                modes[im.mode] += 1
                low = 24 if name in resized else 46  # crops lose up to 2% a side
                assert low <= im.width <= 160 and low <= im.height <= 160, name
    assert set(formats) == {"PNG", "JPEG"} and set(modes) == {"RGB", "L"}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(gt.image_classes)
    assert len(gt.image_classes) >= 4


def test_pixel_limit_header_claims_over_a_billion_pixels(
        gt: GroundTruth, out: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for b in gt.bad_for("images"):
        if b.reason == GroundTruth.PIXEL_LIMIT:
            with Image.open(out / b.file) as im:
                assert im.width * im.height > 1e9
            assert (out / b.file).stat().st_size < 1000


def test_truncated_images_fail_to_load(gt: GroundTruth, out: pathlib.Path) -> None:
    for b in gt.bad_for("images"):
        if b.reason == GroundTruth.TRUNCATED_IMAGE:
            with pytest.raises((OSError, SyntaxError)), Image.open(out / b.file) as im:
                im.load()


def test_extension_lies_are_detected_from_bytes(gt: GroundTruth, out: pathlib.Path) -> None:
    assert {e.true_format for e in gt.extension_lies} == {"PNG", "JPEG"}
    for e in gt.extension_lies:
        with Image.open(out / e.file) as im:
            assert im.format == e.true_format
            im.load()
        assert e.file.endswith("." + e.extension)
        assert e.extension != {"PNG": "png", "JPEG": "jpg"}[e.true_format]
    assert any(e.true_format == "PNG" and e.extension == "jpg" for e in gt.extension_lies)


def test_image_copies_are_what_their_kind_says(gt: GroundTruth, out: pathlib.Path) -> None:
    for d in gt.duplicates_for("images"):
        a, b = out / d.original_file, out / d.copy_file
        assert a.parent == b.parent and a != b  # same label folder
        if d.kind == GroundTruth.EXACT:
            assert a.read_bytes() == b.read_bytes()
            continue
        with Image.open(a) as ia, Image.open(b) as ib:
            ib.load()
            if d.kind == GroundTruth.REENCODE:
                assert ia.size == ib.size and a.read_bytes() != b.read_bytes()
            elif d.kind == GroundTruth.RESIZE:
                assert 0.45 < ib.width / ia.width < 0.95
            else:
                assert 0.94 <= ib.width / ia.width < 1 and 0.94 <= ib.height / ia.height < 1


# -- transactions -------------------------------------------------------------------------

def test_transaction_rows_fail_exactly_as_recorded(gt: GroundTruth, out: pathlib.Path) -> None:
    expected = {(b.file, b.line): b.reason for b in gt.bad_for("transactions")}
    actual = {k: r for k, row in _txn_records(out).items() if (r := _txn_reason(row))}
    assert actual == expected
    details = " ".join(b.detail for b in gt.bad_for("transactions"))
    for fragment in ("9 columns", "11 columns", "truncated JSON", "trailing garbage"):
        assert fragment in details


def test_fraud_rate_and_signal(out: pathlib.Path) -> None:
    rows = [r for r in _txn_records(out).values() if _txn_reason(r) is None]
    fraud = [r for r in rows if r and r["is_fraud"] == "1"]
    assert 0.005 <= len(fraud) / len(rows) <= 0.03

    def usd(r: dict[str, str | None]) -> float:
        return float(str(r["amount"])) / _PER_USD[str(r["currency"])]

    honest = [r for r in rows if r and r["is_fraud"] == "0"]
    assert sum(map(usd, fraud)) / len(fraud) > 2 * sum(map(usd, honest)) / len(honest)
    risky = [r for r in rows if r and r["mcc"] in ("4829", "7995", "5732")]
    assert sum(r["is_fraud"] == "1" for r in risky if r) / len(risky) > 2 * len(fraud) / len(rows)


def test_good_rows_are_realistic(gt: GroundTruth, out: pathlib.Path) -> None:
    rows = [r for r in _txn_records(out).values() if r and _txn_reason(r) is None]
    stamps = [datetime.fromisoformat(str(r["timestamp"])) for r in rows]
    assert max(stamps) - min(stamps) < timedelta(days=92)
    suffixes = {str(r["timestamp"])[19:] for r in rows}
    assert "Z" in suffixes and any(s.startswith("-") for s in suffixes)
    assert any(s.startswith("+") for s in suffixes)
    assert len({r["account"] for r in rows}) > 400 and len({r["merchant"] for r in rows}) > 100
    for r in rows:
        decimals = str(r["amount"]).partition(".")[2]
        assert len(decimals) == (0 if r["currency"] == "JPY" else 2), r
        assert str(r["card_number"])[0] in "45" and len(str(r["card_number"])) == 16


def test_card_numbers_list_every_raw_card_written(gt: GroundTruth, out: pathlib.Path) -> None:
    raw = "\n".join(p.read_text(encoding="utf-8")
                    for p in sorted((out / "transactions").iterdir()))
    assert gt.card_numbers == sorted(set(gt.card_numbers))
    assert all(card in raw for card in gt.card_numbers)
    seen = {r["card_number"] for r in _txn_records(out).values() if r and r["card_number"]}
    assert seen <= set(gt.card_numbers)
    good = [c for c in gt.card_numbers if c.isdigit() and luhn_valid(c)]
    assert len(good) > 0.9 * len(gt.card_numbers)


def test_transaction_duplicates_are_what_their_kind_says(gt: GroundTruth,
                                                         out: pathlib.Path) -> None:
    recs = _txn_records(out)
    same = [k for k in HEADER if k not in ("txn_id", "timestamp", "is_fraud")]
    for d in gt.duplicates_for("transactions"):
        a, b = recs[(d.original_file, d.original_line)], recs[(d.copy_file, d.copy_line)]
        assert a is not None and b is not None
        assert _txn_reason(a) is None and _txn_reason(b) is None
        assert (a["txn_id"], b["txn_id"]) == (d.original_id, d.copy_id)
        assert all(a[k] == b[k] for k in same)
        gap = (datetime.fromisoformat(str(b["timestamp"]))
               - datetime.fromisoformat(str(a["timestamp"]))).total_seconds()
        if d.kind == GroundTruth.EXACT:
            assert a == b
        elif d.kind == GroundTruth.REPLAY:
            assert a["txn_id"] == b["txn_id"] and 3600 <= gap <= 12 * 3600
            assert a["is_fraud"] == b["is_fraud"]
        elif d.kind == GroundTruth.RETRY:
            assert a["txn_id"] != b["txn_id"] and 2 <= gap <= 60
        else:
            assert a["txn_id"] == b["txn_id"] and gap == 0
            assert {a["is_fraud"], b["is_fraud"]} == {"0", "1"}
