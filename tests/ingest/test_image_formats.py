"""Images as users have them: every format Pillow decodes that the config allows, judged by
content (a JPEG named .svg is a JPEG), labels from a manifest file, and unlabeled folders
that are ingested and deduplicated while the image classifier says why it cannot train."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.config import ImageInputConfig, ImageLabelsConfig, config_from_dict
from pipeline.ingest.images import (
    LabelsManifestError,
    claim_images,
    ingest_images,
    read_labels_manifest,
    sniff_format,
)
from pipeline.storage import Location


def _encode(fmt: str, mode: str = "RGB", seed: int = 0, size: tuple[int, int] = (16, 12)
            ) -> bytes:
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    buf = io.BytesIO()
    im.convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def _uri(path: Path) -> str:
    return "file://" + str(path.resolve())


# --------------------------------------------------------------------------- unit tests


@pytest.mark.unit
@pytest.mark.parametrize(("fmt", "mode", "want"), [
    ("JPEG", "RGB", "JPEG"), ("PNG", "RGB", "PNG"), ("PPM", "RGB", "PPM"),
    ("PPM", "L", "PPM"), ("PPM", "1", "PPM"), ("TIFF", "RGB", "TIFF"), ("ICO", "RGB", "ICO"),
    ("GIF", "P", "GIF"), ("BMP", "RGB", "BMP"), ("WEBP", "RGB", "WEBP")])
def test_sniff_names_the_format_from_the_first_bytes(fmt: str, mode: str, want: str) -> None:
    assert sniff_format(_encode(fmt, mode)[:16]) == want


@pytest.mark.unit
@pytest.mark.parametrize("head", [b"", b"not an image at all", b'<svg xmlns="http://ww',
                                  b"\x00" * 16, b"path,label\ncat/a"])
def test_sniff_finds_no_image_in_other_bytes(head: bytes) -> None:
    assert sniff_format(head) is None


@pytest.mark.unit
def test_manifest_csv_and_jsonl_paths(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    csv_file = tmp_path / "m" / "labels.csv"
    csv_file.write_text("path,label,extra\ncat/a.png,cat,x\n./dog/../dog/b.png,dog,y\n"
                        f"{tmp_path}/abs.png,7,z\nnone.png,,w\ncat/a.png,cat,again\n")
    got = read_labels_manifest(Location(str(csv_file)))
    assert got == {_uri(tmp_path / "m/cat/a.png"): "cat", _uri(tmp_path / "m/dog/b.png"): "dog",
                   _uri(tmp_path / "abs.png"): "7", _uri(tmp_path / "m/none.png"): None}
    jsonl = tmp_path / "m" / "labels.jsonl"
    jsonl.write_text('{"file": "cat/a.png", "y": 3}\n\n{"file": "b.png", "y": null}\n')
    assert read_labels_manifest(Location(str(jsonl)), "file", "y") == {
        _uri(tmp_path / "m/cat/a.png"): "3", _uri(tmp_path / "m/b.png"): None}


@pytest.mark.unit
@pytest.mark.parametrize(("name", "text", "match"), [
    ("a.csv", "file,label\na.png,cat\n", "no column"),
    ("a.csv", "path,label\na.png,cat\n./a.png,dog\n", "'cat' on line 2 and 'dog' on line 3"),
    ("a.jsonl", '{"path": "a.png", "label": "x"}\n[1]\n', "line 2"),
    ("a.jsonl", "{broken\n", "not a JSON object"),
])
def test_manifest_problems_are_named(tmp_path: Path, name: str, text: str, match: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(LabelsManifestError, match=match):
        read_labels_manifest(Location(str(tmp_path / name)))


@pytest.mark.unit
def test_label_config_problems_and_reason() -> None:
    from pipeline import modalities

    with pytest.raises(ValueError, match=r"labels\.path: required with source: manifest"):
        config_from_dict({"inputs": {"images": {"labels": {"source": "manifest"}}}})
    with pytest.raises(ValueError, match=r"labels\.path: only read with source: manifest"):
        config_from_dict({"inputs": {"images": {"labels": {"path": "x.csv"}}}})
    spec = modalities.get("images")
    cfg = config_from_dict({"inputs": {"images": {"labels": {"source": "none"}}}})
    assert not spec.trains(cfg)
    assert "inputs.images.labels.source is none" in spec.disabled_reason(cfg)
    assert spec.trains(config_from_dict({}))


# --------------------------------------------------------------------- integration tests

FOLDER: dict[str, tuple[bytes, str | None, str | None]] = {  # rel -> (bytes, reason, format)
    "cat/a.ppm": (_encode("PPM", seed=1), None, "PPM"),
    "cat/b.pgm": (_encode("PPM", "L", seed=2), None, "PPM"),
    "cat/c.pbm": (_encode("PPM", "1", seed=3), None, "PPM"),
    "dog/d.tiff": (_encode("TIFF", seed=4), None, "TIFF"),
    "dog/e.ico": (_encode("ICO", seed=5), None, "ICO"),
    "dog/f.png": (_encode("PNG", seed=6), None, "PNG"),
    "dog/photo.svg": (_encode("JPEG", seed=7), None, "JPEG"),  # the extension lies
    "cat/noext": (_encode("PNG", seed=8), None, "PNG"),  # no extension at all
    "cat/corrupt.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "UNDECODABLE_IMAGE", None),
    # No image by name or content: not read (the stage quarantines it, UNSUPPORTED_FILE).
    "dog/real.svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "UNSUPPORTED_FILE", None),
    "README.md": (b"# my photos\n", "UNSUPPORTED_FILE", None),
    "dog/g.pcx": (_encode("PCX", seed=9), "UNSUPPORTED_FORMAT", None),  # not allowed
}
FORMATS = ("PNG", "JPEG", "TIFF", "PPM", "ICO")


def _write(root: Path, files: Mapping[str, tuple[bytes, Any, Any]]) -> None:
    for rel, (data, _, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def _outcomes(quarantine: list[Any], curated: list[Any]
              ) -> dict[str, tuple[str | None, str | None]]:
    got: dict[str, tuple[str | None, str | None]] = {
        q["source"]: (q["reason"], None) for q in quarantine}
    assert not set(got) & {c["source"] for c in curated}
    got.update({c["source"]: (None, c["format"]) for c in curated})
    return got


@pytest.mark.integration
def test_every_file_judged_by_content(spark: Any, tmp_path: Path) -> None:
    _write(tmp_path, FOLDER)
    cfg = ImageInputConfig(formats=FORMATS)
    result = ingest_images(spark, cfg, [Location(str(tmp_path))])
    assert result.shared is not None and result.figures is not None
    result.shared.cache()  # as the stage does: the files are probed once
    quarantine, curated = result.quarantine.collect(), result.curated.drop("bytes").collect()
    read = {r: v for r, v in FOLDER.items() if v[1] != "UNSUPPORTED_FILE"}
    assert _outcomes(quarantine, curated) == {_uri(tmp_path / r): (why, fmt)
                                              for r, (_, why, fmt) in read.items()}
    assert result.n_input == len(read)
    labels = {r["source"].rsplit("/", 1)[1]: r["label"] for r in curated}
    assert labels["photo.svg"] == "dog" and labels["a.ppm"] == "cat"
    figures = result.figures()
    result.shared.unpersist()
    assert figures["formats"] == {"ICO": 1, "JPEG": 1, "PNG": 2, "PPM": 3, "TIFF": 1}
    # photo.svg and noext carry no extension of their format; both were read by content
    assert figures["extension_mismatch"] == 2 and figures["read_by_content"] == 2
    details = {q["source"]: q["detail"] for q in quarantine}
    assert "inputs.images.formats" in details[_uri(tmp_path / "dog/g.pcx")]


@pytest.mark.unit
def test_other_names_are_claimed_by_content_or_an_allowed_extension(tmp_path: Path) -> None:
    _write(tmp_path, FOLDER)
    # TGA has no signature (an RGB one starts like a CUR cursor, a grey one like nothing)
    (tmp_path / "h.tga").write_bytes(_encode("TGA", "L", seed=10))
    others = [Location(str(tmp_path / n)) for n in
              ("dog/photo.svg", "cat/noext", "dog/real.svg", "README.md", "h.tga")]
    claimed = [loc.name for loc in claim_images(ImageInputConfig(), others)]
    assert claimed == ["photo.svg", "noext"]
    with_tga = ImageInputConfig(formats=("PNG", "JPEG", "TGA"))
    assert [loc.name for loc in claim_images(with_tga, others)] == [
        "photo.svg", "noext", "h.tga"]


@pytest.mark.integration
def test_labels_from_a_manifest(spark: Any, tmp_path: Path) -> None:
    files = {f"x/{i}.png": (_encode("PNG", seed=20 + i), None, "PNG") for i in range(4)}
    _write(tmp_path, files)
    # In the input folder, with relative paths; x/3.png is not listed, x/2.png has no label.
    (tmp_path / "labels.csv").write_text(
        "path,label\nx/0.png,cat\nx/1.png,dog\nx/2.png,\ngone.png,cat\n")
    cfg = ImageInputConfig(labels=ImageLabelsConfig(source="manifest",
                                                    path=str(tmp_path / "labels.csv")))
    result = ingest_images(spark, cfg, [Location(str(tmp_path))])
    curated = {r["source"]: r["label"] for r in result.curated.collect()}
    assert curated == {_uri(tmp_path / "x/0.png"): "cat", _uri(tmp_path / "x/1.png"): "dog"}
    quarantine = {q["source"]: q["reason"] for q in result.quarantine.collect()}
    assert quarantine == {_uri(tmp_path / "x/2.png"): "UNLABELED_IMAGE",
                          _uri(tmp_path / "x/3.png"): "UNLABELED_IMAGE"}
    assert result.n_input == 4  # the manifest is no image: the stage rejects it
    assert result.figures is not None
    assert result.figures()["labels"] == {
        "source": "manifest", "manifest": _uri(tmp_path / "labels.csv"),
        "manifest_entries": 4, "manifest_entries_without_image": 1}


@pytest.mark.integration
def test_unlabeled_folder_is_ingested_and_deduplicated_without_training(
        spark: Any, tmp_path: Path) -> None:
    from pipeline.graph import default_stages
    from pipeline.orchestrator import plan, run_pipeline

    raw = tmp_path / "raw"
    files = {f"{i}.png": (_encode("PNG", seed=40 + i), None, "PNG") for i in range(3)}
    files["copy.jpg"] = files["0.png"]  # an exact copy, named .jpg
    files["photo.svg"] = (_encode("JPEG", seed=50), None, "JPEG")  # read by content
    files["README.md"] = (b"# photos\n", "UNSUPPORTED_FILE", None)
    _write(raw, files)
    cfg = config_from_dict({
        "modalities": ["images"], "run_id": "unlabeled", "spark": {"shuffle_partitions": 2},
        "storage": {"root": f"file://{tmp_path / 'store'}"},
        "inputs": {"images": {"paths": [str(raw)], "labels": {"source": "none"}}}})
    entries = {e.stage: e for e in plan(cfg, default_stages())}
    for stage in ("train/images", "evaluate/images"):
        assert entries[stage].decision == "disabled"
        assert "no labels: inputs.images.labels.source is none" in entries[stage].reason
    outcomes = {o.name: o for o in run_pipeline(
        cfg, default_stages(), selected=["ingest/images", "dedup/images"])}
    ingest = outcomes["ingest/images"].rows
    assert (ingest["input"], ingest["curated"], ingest["quarantined.UNSUPPORTED_FILE"]) == (
        6, 5, 1)
    assert (ingest["files.read"], ingest["files.rejected"]) == (5, 1)
    dedup = outcomes["dedup/images"].rows
    assert dedup["duplicates"] == 1 and dedup["kept"] == 4
    assert dedup["kept"] + dedup["duplicates"] + dedup["quarantined"] == dedup["input"]


@pytest.mark.unit
def test_manifest_digest_is_part_of_the_ingest_key(tmp_path: Path) -> None:
    from pipeline import modalities
    from pipeline.config import ConfigError

    spec = modalities.get("images")
    manifest = tmp_path / "labels.jsonl"
    cfg = config_from_dict({"inputs": {"images": {"labels": {
        "source": "manifest", "path": str(manifest)}}}})
    with pytest.raises(ConfigError, match="no such file"):
        spec.ingest_key_parts(cfg)
    manifest.write_text(json.dumps({"path": "a.png", "label": "cat"}) + "\n")
    first = spec.ingest_key_parts(cfg)
    manifest.write_text(json.dumps({"path": "a.png", "label": "dog"}) + "\n")
    assert spec.ingest_key_parts(cfg) != first
