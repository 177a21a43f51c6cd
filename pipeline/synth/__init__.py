"""Sample raw data with planted duplicates and bad records, plus the ground truth to check.

`generate(out_dir)` writes three raw modalities the way they tend to arrive: text as JSONL
shards and loose .txt files, images as `images/<label>/` folders of PNG/JPEG files, and card
transactions as CSV and JSONL shards. Into each it plants the artifacts ingest and dedup must
handle (exact and near duplicates, malformed and invalid records), and records every one of
them in `ground_truth.json`, written last.

Output depends only on (seed, scale): the same pair gives byte-identical files. Each
modality draws from its own random stream, so generating a subset of modalities writes the
same files for those modalities as a full run.

Base counts at scale 1.0: 1000 text records, 200 image files, 10,000 transaction rows; all
scale linearly (with small floors so each planted kind is present at any scale).
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence

from pipeline.synth.common import (
    MODALITIES,
    BadRecord,
    ExtensionLie,
    GroundTruth,
    ModalityResult,
    PlantedDuplicate,
)
from pipeline.synth.transactions import luhn_valid

__all__ = [
    "MODALITIES",
    "BadRecord",
    "ExtensionLie",
    "GroundTruth",
    "PlantedDuplicate",
    "generate",
    "luhn_valid",
]

GROUND_TRUTH_FILE = "ground_truth.json"



def _generator(modality: str) -> Callable[[pathlib.Path, float, int], ModalityResult] | None:
    from pipeline import modalities

    spec = modalities.find(modality)
    return spec.synth if spec is not None else None


def generate(
    out_dir: str | pathlib.Path,
    scale: float = 1.0,
    seed: int = 0,
    modalities: Sequence[str] = MODALITIES,
) -> GroundTruth:
    """Write sample raw data for `modalities` under the local directory `out_dir`.

    Creates `out_dir/text/`, `out_dir/images/<label>/`, `out_dir/transactions/` (those
    requested) and finally `out_dir/ground_truth.json`, and returns that ground truth.
    `scale` multiplies every record count; `seed` selects the data. Existing files of the
    same names are overwritten; pass a fresh directory to get exactly the listed files.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    from pipeline import modalities as registry

    unknown = [m for m in modalities if _generator(m) is None]
    if unknown:
        known = [s.name for s in registry.specs() if s.synth is not None]
        raise ValueError(f"unknown modalities {unknown}; choose from {known}")
    root = pathlib.Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    # Canonical order, so the ground truth does not depend on how the caller listed them.
    chosen = [m for m in registry.names() if m in modalities]
    truth = GroundTruth(seed=seed, scale=scale, modalities=chosen)
    for modality in chosen:
        generate_one = _generator(modality)
        assert generate_one is not None
        truth.add(modality, generate_one(root, scale, seed))
    truth.to_json(root / GROUND_TRUTH_FILE)
    return truth
