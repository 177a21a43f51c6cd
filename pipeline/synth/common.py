"""Ground-truth records shared by the synth generators.

Every planted artifact is described here by the file it lives in (relative to the output
directory, with `/` separators) and, where the file holds many records, by its 1-based line
number, so that ingest and dedup tests can look each one up without re-deriving anything.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

MODALITIES: tuple[str, ...] = ("text", "images", "transactions")

# The leading number keeps each modality's random stream independent of which other
# modalities are generated in the same call, so `modalities=("text",)` writes the same
# text files as a full run.
_MODALITY_STREAM = {"text": 1, "images": 2, "transactions": 3}


def modality_rng(seed: int, modality: str) -> np.random.Generator:
    """A generator seeded from (`seed`, modality), independent across modalities."""
    return np.random.default_rng([_MODALITY_STREAM[modality], seed])


def scaled(base: float, scale: float, minimum: int = 0) -> int:
    """`base * scale` rounded, but never below `minimum`."""
    return max(minimum, round(base * scale))


@dataclass(frozen=True)
class BadRecord:
    """A raw record that ingest must quarantine with `reason`.

    `line` is the 1-based line number in `file` (for CSV the header is line 1, so the first
    data row is line 2), or None when the whole file is the record (.txt and image files).
    """

    modality: str
    file: str
    line: int | None
    reason: str
    detail: str = ""
    record_id: str | None = None


@dataclass(frozen=True)
class PlantedDuplicate:
    """A copy planted from an original record; `kind` says how the copy was derived.

    `true_jaccard` (text only) is the exact 5-word-shingle Jaccard of the two normalized
    texts; `target_jaccard` is the bin the copy was aimed at. Near-duplicates below a dedup
    threshold are still listed: they are the negatives that must *not* be merged. `detail`
    says what was changed (edit count, re-encoding, size, time shift).
    """

    modality: str
    kind: str
    original_file: str
    original_line: int | None
    original_id: str
    copy_file: str
    copy_line: int | None
    copy_id: str
    true_jaccard: float | None = None
    target_jaccard: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class ExtensionLie:
    """A good image whose file extension names another format than its bytes hold."""

    file: str
    true_format: str
    extension: str


@dataclass
class ModalityResult:
    """What one modality generator wrote; merged into the GroundTruth by `generate`."""

    n_records: int
    bad: list[BadRecord] = field(default_factory=list)
    duplicates: list[PlantedDuplicate] = field(default_factory=list)
    extension_lies: list[ExtensionLie] = field(default_factory=list)
    card_numbers: list[str] = field(default_factory=list)
    image_classes: list[str] = field(default_factory=list)


@dataclass
class GroundTruth:
    """Everything planted by one `generate` call, written as `ground_truth.json`.

    The class attributes are the quarantine reason codes ingest uses, and the duplicate kinds
    planted per modality.
    """

    # Quarantine reasons: text.
    MALFORMED_JSON: ClassVar[str] = "MALFORMED_JSON"
    INVALID_UTF8: ClassVar[str] = "INVALID_UTF8"
    EMPTY_TEXT: ClassVar[str] = "EMPTY_TEXT"
    TOO_LONG: ClassVar[str] = "TOO_LONG"
    MISSING_FIELD: ClassVar[str] = "MISSING_FIELD"  # text and transactions
    # Quarantine reasons: images.
    UNDECODABLE_IMAGE: ClassVar[str] = "UNDECODABLE_IMAGE"
    TRUNCATED_IMAGE: ClassVar[str] = "TRUNCATED_IMAGE"
    PIXEL_LIMIT: ClassVar[str] = "PIXEL_LIMIT"
    # Quarantine reasons: transactions.
    MALFORMED_ROW: ClassVar[str] = "MALFORMED_ROW"
    BAD_AMOUNT: ClassVar[str] = "BAD_AMOUNT"
    AMOUNT_OUT_OF_RANGE: ClassVar[str] = "AMOUNT_OUT_OF_RANGE"
    BAD_TIMESTAMP: ClassVar[str] = "BAD_TIMESTAMP"
    UNKNOWN_CURRENCY: ClassVar[str] = "UNKNOWN_CURRENCY"
    BAD_CARD: ClassVar[str] = "BAD_CARD"
    # Not a quarantine reason: conflicting labels are resolved by dedup.
    LABEL_CONFLICT: ClassVar[str] = "LABEL_CONFLICT"

    REASONS: ClassVar[dict[str, tuple[str, ...]]] = {
        "text": ("MALFORMED_JSON", "INVALID_UTF8", "EMPTY_TEXT", "TOO_LONG", "MISSING_FIELD"),
        "images": ("UNDECODABLE_IMAGE", "TRUNCATED_IMAGE", "PIXEL_LIMIT"),
        "transactions": (
            "MALFORMED_ROW",
            "MISSING_FIELD",
            "BAD_AMOUNT",
            "AMOUNT_OUT_OF_RANGE",
            "BAD_TIMESTAMP",
            "UNKNOWN_CURRENCY",
            "BAD_CARD",
        ),
    }

    # Duplicate kinds.
    EXACT: ClassVar[str] = "exact"
    WHITESPACE_UNICODE: ClassVar[str] = "whitespace_unicode"
    NEAR_SUBSTITUTION: ClassVar[str] = "near_substitution"
    NEAR_INSERTION: ClassVar[str] = "near_insertion"
    NEAR_REORDER: ClassVar[str] = "near_reorder"
    REENCODE: ClassVar[str] = "reencode"
    RESIZE: ClassVar[str] = "resize"
    CROP: ClassVar[str] = "crop"
    REPLAY: ClassVar[str] = "replay"
    RETRY: ClassVar[str] = "retry"
    LABEL_CONFLICT_KIND: ClassVar[str] = "label_conflict"

    DUPLICATE_KINDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "text": ("exact", "whitespace_unicode", "near_substitution", "near_insertion",
                 "near_reorder"),
        "images": ("exact", "reencode", "resize", "crop"),
        "transactions": ("exact", "replay", "retry", "label_conflict"),
    }

    seed: int
    scale: float
    modalities: list[str]
    # Per modality. A record is what ingest reads as one: a non-blank JSONL line, a CSV data
    # row (not the header), a .txt file, an image file. n_good = n_records - n_bad.
    n_records: dict[str, int] = field(default_factory=dict)
    n_bad: dict[str, int] = field(default_factory=dict)
    n_good: dict[str, int] = field(default_factory=dict)
    bad: list[BadRecord] = field(default_factory=list)
    duplicates: list[PlantedDuplicate] = field(default_factory=list)
    extension_lies: list[ExtensionLie] = field(default_factory=list)
    card_numbers: list[str] = field(default_factory=list)
    image_classes: list[str] = field(default_factory=list)
    version: int = 1

    def add(self, modality: str, result: ModalityResult) -> None:
        """Merge one modality generator's result, deriving that modality's counts."""
        self.n_records[modality] = result.n_records
        self.n_bad[modality] = len(result.bad)
        self.n_good[modality] = result.n_records - len(result.bad)
        self.bad.extend(result.bad)
        self.duplicates.extend(result.duplicates)
        self.extension_lies.extend(result.extension_lies)
        self.card_numbers.extend(result.card_numbers)
        self.image_classes.extend(result.image_classes)

    def bad_for(self, modality: str) -> list[BadRecord]:
        """The bad records of one modality."""
        return [b for b in self.bad if b.modality == modality]

    def duplicates_for(self, modality: str, kind: str | None = None) -> list[PlantedDuplicate]:
        """The planted duplicates of one modality, optionally of one kind only."""
        return [
            d for d in self.duplicates
            if d.modality == modality and (kind is None or d.kind == kind)
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the schema of `ground_truth.json`)."""
        return {
            "version": self.version,
            "seed": self.seed,
            "scale": self.scale,
            "modalities": list(self.modalities),
            "n_records": dict(self.n_records),
            "n_bad": dict(self.n_bad),
            "n_good": dict(self.n_good),
            "bad": [asdict(b) for b in self.bad],
            "duplicates": [asdict(d) for d in self.duplicates],
            "extension_lies": [asdict(e) for e in self.extension_lies],
            "card_numbers": list(self.card_numbers),
            "image_classes": list(self.image_classes),
        }

    def to_json(self, path: str | pathlib.Path | None = None) -> str:
        """Serialize deterministically; also write to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"
        if path is not None:
            pathlib.Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroundTruth:
        """Inverse of `to_dict`."""
        return cls(
            seed=int(data["seed"]),
            scale=float(data["scale"]),
            modalities=list(data["modalities"]),
            n_records={m: int(n) for m, n in data["n_records"].items()},
            n_bad={m: int(n) for m, n in data["n_bad"].items()},
            n_good={m: int(n) for m, n in data["n_good"].items()},
            bad=[BadRecord(**b) for b in data["bad"]],
            duplicates=[PlantedDuplicate(**d) for d in data["duplicates"]],
            extension_lies=[ExtensionLie(**e) for e in data["extension_lies"]],
            card_numbers=list(data["card_numbers"]),
            image_classes=list(data.get("image_classes", [])),
            version=int(data.get("version", 1)),
        )

    @classmethod
    def from_json(cls, path: str | pathlib.Path) -> GroundTruth:
        """Load a `ground_truth.json` written by `to_json`."""
        return cls.from_dict(json.loads(pathlib.Path(path).read_text(encoding="utf-8")))


def rel(path: pathlib.Path, root: pathlib.Path) -> str:
    """`path` relative to `root`, with `/` separators on every platform."""
    return path.relative_to(root).as_posix()
