"""Users' own text and image folders, clean and in the formats they come in, through the
whole graph (ingest -> dedup -> train -> evaluate -> reports) with configuration only:

- text: a folder of plain-text documents mixing UTF-8 and Windows-1252 (encoding `auto`),
  plus a Parquet dump of a Hugging Face-style dataset (`id`, `text`) in the same input;
- images: class folders of PPM, PGM, PBM and TIFF files, and a PNG saved under `.jpg`.

Nothing is quarantined (a clean input publishes empty quarantine tables), every record is
accounted for, the detected encodings and formats are in the stage figures, and both
models train and are scored. (Transaction tables of four public shapes:
test_transaction_tables.py.)"""

from __future__ import annotations

import codecs
import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import config_from_dict
from pipeline.graph import default_stages
from pipeline.orchestrator import run_pipeline
from pipeline.storage import RunPaths, published_files, read_manifest

pytestmark = pytest.mark.integration

WORDS = ("river", "bank", "stone", "bridge", "market", "winter", "letter", "garden",
         "window", "harbour", "village", "mountain", "engine", "station", "forest", "paper")
#: Windows-1252 bytes that are not valid UTF-8: curly quotes, dashes, accented letters
FRENCH = "Déjà l’été : « naïve » citation – à Noël, où ça ?"
N_UTF8, N_CP1252, N_DUMP = 24, 12, 24
IMAGE_FORMATS = {"ppm": ("PPM", "RGB"), "pgm": ("PPM", "L"), "pbm": ("PPM", "1"),
                 "tif": ("TIFF", "RGB"), "jpg": ("PNG", "RGB")}  # a PNG named .jpg
PER_FORMAT = 5  # images of each format per class


def _doc(rng: np.random.Generator, i: int) -> str:
    return f"Document {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(12, 30))))


def _write_text(root: Path) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    folder = root / "notes"
    folder.mkdir(parents=True)
    for i in range(N_UTF8):
        (folder / f"note-{i:02d}.txt").write_text(_doc(rng, i) + " ✓ naïve", encoding="utf-8")
    for i in range(N_UTF8, N_UTF8 + N_CP1252):
        text = f"{_doc(rng, i)} {FRENCH}"
        (folder / f"legacy-{i:02d}.txt").write_bytes(text.encode("cp1252"))
    dump = root / "dump" / "train-00000-of-00001.parquet"
    dump.parent.mkdir()
    pq.write_table(pa.table({"id": [f"hf-{i}" for i in range(N_DUMP)],
                             "text": [_doc(rng, 100 + i) for i in range(N_DUMP)]}), dump)
    return {"paths": [str(folder), str(dump)], "encoding": "auto"}


def _write_images(root: Path) -> dict[str, Any]:
    from PIL import Image

    from pipeline.synth.images import draw_image

    rng = np.random.default_rng(12)
    for label in ("circle", "square"):
        for ext, (fmt, mode) in IMAGE_FORMATS.items():
            for i in range(PER_FORMAT):
                image: Image.Image = draw_image(rng, label).convert(mode)
                buf = io.BytesIO()
                image.save(buf, format=fmt)
                path = root / "images" / label / f"{label}-{i}.{ext}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(buf.getvalue())
    return {"paths": [str(root / "images")], "labels": {"source": "folder"}}


def test_own_text_and_image_folders_run_through_the_whole_graph(
        spark: Any, ray_local: Any, tmp_path: Path) -> None:
    inputs = {"text": _write_text(tmp_path / "raw"), "images": _write_images(tmp_path / "raw")}
    cfg = config_from_dict({
        "run_id": "own", "modalities": ["text", "images"], "inputs": inputs,
        "storage": {"root": f"file://{tmp_path / 'store'}"},
        "spark": {"shuffle_partitions": 2}, "ray": {"num_cpus": 2},
        "train": {"epochs": 1, "warmup_steps": 1, "checkpoint_every_steps": 1000,
                  "log_every_steps": 100, "scaling": {"num_workers": 0},
                  "text": {"seq_len": 64, "d_model": 32, "n_layers": 1, "n_heads": 2,
                           "batch_size": 16},
                  "images": {"image_size": 16, "channels": 8, "batch_size": 16}},
        "evaluate": {"batch_size": 64, "num_samples": 1, "max_new_tokens": 8}})
    outcomes = {o.name: o for o in run_pipeline(cfg, default_stages())}
    ran = {name for name, o in outcomes.items() if o.state == "ran"}
    assert ran == {f"{kind}/{m}" for kind in ("ingest", "dedup", "train", "evaluate")
                   for m in ("text", "images")} | {"reports/dedup", "reports/summary"}, ran

    run = RunPaths(cfg.storage.location, "own")
    expected = {"text": N_UTF8 + N_CP1252 + N_DUMP,
                "images": 2 * len(IMAGE_FORMATS) * PER_FORMAT}
    for m, n in expected.items():
        ingest = read_manifest(run.stage(f"ingest/{m}"))
        dedup = read_manifest(run.stage(f"dedup/{m}")).row_counts
        assert ingest.row_counts["input"] == ingest.row_counts["curated"] == n, ingest
        assert ingest.row_counts["quarantined"] == 0
        # The empty quarantine is a real, readable table.
        (quarantine, *_) = published_files(run.stage(f"ingest/{m}"), "quarantine/", ".parquet")
        with quarantine.open() as fh:
            assert pq.read_table(fh).num_rows == 0
        assert dedup["kept"] + dedup["duplicates"] + dedup["quarantined"] == dedup["input"] == n
        assert min(dedup.get(f"split.{s}", 0) for s in ("train", "val", "test")) > 0, dedup

    figures = read_manifest(run.stage("ingest/text")).extra["figures"]
    files_by_codec: dict[str, int] = {}
    for name, n in figures["encodings"].items():  # codec names as detected, normalized
        key = name if name == "parquet" else codecs.lookup(name).name
        files_by_codec[key] = files_by_codec.get(key, 0) + n
    assert files_by_codec == {"utf-8": N_UTF8, "cp1252": N_CP1252, "parquet": 1}, figures
    curated = []
    for loc in published_files(run.stage("ingest/text"), "curated/", ".parquet"):
        with loc.open() as fh:
            curated += pq.read_table(fh, columns=["text"]).column("text").to_pylist()
    assert sum(FRENCH in t for t in curated) == N_CP1252  # decoded, not mangled
    images = read_manifest(run.stage("ingest/images")).extra["figures"]
    assert images["formats"] == {"PNG": 2 * PER_FORMAT, "PPM": 6 * PER_FORMAT,
                                 "TIFF": 2 * PER_FORMAT}, images
    assert images["extension_mismatch"] == 2 * PER_FORMAT  # the PNGs named .jpg

    text = outcomes["evaluate/text"].extra["metrics"]
    assert 0 < text["bits_per_byte"] < 16 and text["documents"] > 0
    vision = outcomes["evaluate/images"].extra["metrics"]
    assert 0.0 <= vision["accuracy"] <= 1.0
    assert read_manifest(run.stage("train/images")).extra["best_checkpoint"]
