"""Image ingest: every reason code, format from the bytes, decompression-bomb handling,
pixel hashes, schema, determinism, relocation-proof ids, reconciliation, synth ground truth."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.config import ImageInputConfig
from pipeline.ingest.images import CURATED_COLUMNS, IMAGE_EXTENSIONS, ingest_images, probe_image
from pipeline.ingest.reasons import IMAGE_REASONS
from pipeline.storage import Location

FORMATS = ImageInputConfig().formats
MAX_PIXELS = 16_000_000


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _picture(mode: str = "RGB", size: tuple[int, int] = (20, 10), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    return rgb.convert(mode)


def _png_claiming(width: int, height: int, idat: bytes = zlib.compress(b"\0" * 64)) -> bytes:
    """A small PNG whose IHDR (with a valid CRC) claims `width` x `height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _truncated(fmt: str) -> bytes:
    data = _encode(_picture(size=(40, 40), seed=1), fmt, **({"quality": 90} if fmt == "JPEG"
                                                             else {}))
    return data[: len(data) // 2]


BAD_BYTES: dict[str, list[bytes]] = {
    "UNDECODABLE_IMAGE": [b"<!DOCTYPE html><html><body>404</body></html>", b"",
                          np.random.default_rng(0).bytes(500),
                          b"\x89PNG\r\n\x1a\n" + b"\x00" * 40],
    "TRUNCATED_IMAGE": [_truncated("PNG"), _truncated("JPEG"),
                        _png_claiming(20, 10, idat=b"not a zlib stream" * 4)],  # corrupt
    "PIXEL_LIMIT": [_png_claiming(100_000, 100_000), _png_claiming(5_000, 5_000)],
    "UNSUPPORTED_FORMAT": [_encode(_picture(), "ICO"), _encode(_picture(), "PCX"),
                           _encode(_picture(), "TGA")],
}


# --------------------------------------------------------------------------- unit tests


@pytest.mark.unit
@pytest.mark.parametrize("reason", sorted(BAD_BYTES))
def test_probe_reason(reason: str) -> None:
    for data in BAD_BYTES[reason]:
        got = probe_image(data, MAX_PIXELS, FORMATS)
        assert got["reason"] == reason, (data[:16], got["detail"])
        assert got["detail"] and got["head"].startswith(f"{len(data)} bytes: b")
        assert got["pixel_hash"] is None


@pytest.mark.unit
def test_pixel_limit_names_the_claim_before_decoding() -> None:
    # Between 1x and 2x the limit Pillow only warns; the header check still rejects it.
    mid = probe_image(_png_claiming(5_000, 5_000), MAX_PIXELS, FORMATS)
    assert mid["detail"].startswith("header claims 5000x5000 = 25,000,000 pixels > max_pixels")
    huge = probe_image(_png_claiming(100_000, 100_000), MAX_PIXELS, FORMATS)
    assert "10,000,000,000 pixels > max_pixels 16,000,000" in huge["detail"]
    # The limit comes from the config, not from Pillow's default.
    small = probe_image(_encode(_picture(size=(20, 10)), "PNG"), 199, FORMATS)
    assert small["reason"] == "PIXEL_LIMIT" and "20x10 = 200 pixels" in small["detail"]
    assert probe_image(_encode(_picture(size=(20, 10)), "PNG"), 200, FORMATS)["reason"] is None


@pytest.mark.unit
def test_truncated_images_stay_errors_even_if_someone_allowed_them() -> None:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        assert probe_image(_truncated("PNG"), MAX_PIXELS, FORMATS)["reason"] == "TRUNCATED_IMAGE"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


@pytest.mark.unit
def test_unsupported_follows_the_config() -> None:
    png = _encode(_picture(), "PNG")
    assert probe_image(png, MAX_PIXELS, ("JPEG",))["reason"] == "UNSUPPORTED_FORMAT"
    assert probe_image(_encode(_picture(), "PPM"), MAX_PIXELS, ("PPM",))["reason"] is None


@pytest.mark.unit
@pytest.mark.parametrize(("fmt", "mode", "channels"), [
    ("PNG", "RGB", 3), ("PNG", "RGBA", 4), ("PNG", "L", 1), ("PNG", "LA", 2), ("PNG", "P", 1),
    ("PNG", "I;16", 1), ("JPEG", "RGB", 3), ("JPEG", "L", 1), ("JPEG", "CMYK", 4),
    ("GIF", "P", 1), ("BMP", "RGB", 3), ("WEBP", "RGB", 3), ("TIFF", "RGB", 3),
])
def test_probe_good_image(fmt: str, mode: str, channels: int) -> None:
    got = probe_image(_encode(_picture(mode), fmt), MAX_PIXELS, FORMATS)
    assert got["reason"] is None, got["detail"]
    assert (got["format"], got["width"], got["height"], got["channels"]) == (fmt, 20, 10,
                                                                            channels)
    assert len(got["pixel_hash"]) == 64


@pytest.mark.unit
def test_pixel_hash_is_about_decoded_pixels() -> None:
    im = _picture()
    lossless = [_encode(im, "PNG"), _encode(im, "PNG", compress_level=0), _encode(im, "BMP"),
                _encode(im, "TIFF"), _encode(im, "WEBP", lossless=True)]
    hashes = {probe_image(d, MAX_PIXELS, FORMATS)["pixel_hash"] for d in lossless}
    assert len(hashes) == 1
    assert len({hashlib.sha256(d).hexdigest() for d in lossless}) == len(lossless)
    other = im.copy()
    other.putpixel((0, 0), (0, 0, 0) if im.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert probe_image(_encode(other, "PNG"), MAX_PIXELS, FORMATS)["pixel_hash"] not in hashes
    # A palette image and its RGB expansion are the same pixels.
    pal = im.quantize(16)
    assert (probe_image(_encode(pal, "PNG"), MAX_PIXELS, FORMATS)["pixel_hash"]
            == probe_image(_encode(pal.convert("RGB"), "PNG"), MAX_PIXELS, FORMATS)["pixel_hash"])


@pytest.mark.unit
def test_probe_is_deterministic() -> None:
    for reason, samples in BAD_BYTES.items():
        for data in samples:
            assert probe_image(data, MAX_PIXELS, FORMATS) == probe_image(data, MAX_PIXELS,
                                                                          FORMATS), reason


@pytest.mark.unit
def test_reason_list_is_the_fixed_one() -> None:
    assert set(IMAGE_REASONS) == {"UNDECODABLE_IMAGE", "TRUNCATED_IMAGE", "PIXEL_LIMIT",
                                  "UNSUPPORTED_FORMAT", "FILE_TOO_LARGE", "UNSUPPORTED_FILE",
                                  "UNLABELED_IMAGE"}


# --------------------------------------------------------------------- integration tests

CFG = ImageInputConfig(max_bytes=6_000)


def _uri(path: Path) -> str:
    return "file://" + str(path.resolve())


def _write_fixture(root: Path) -> dict[str, tuple[str | None, str | None]]:
    """Image folders with one file per outcome; returns source -> (reason, format)."""
    files: dict[str, tuple[bytes, str | None, str | None]] = {
        "cat/a.png": (_encode(_picture(), "PNG"), None, "PNG"),
        "cat/lie.jpg": (_encode(_picture(seed=2), "PNG"), None, "PNG"),  # extension lies
        "dog/b.jpeg": (_encode(_picture(seed=3), "JPEG"), None, "JPEG"),
        "dog/nested/c.gif": (_encode(_picture("P", seed=4), "GIF"), None, "GIF"),
        "dog/d.webp": (_encode(_picture(seed=5), "WEBP"), None, "WEBP"),
        "bird/e.TIFF": (_encode(_picture(seed=6), "TIFF"), None, "TIFF"),
        "bird/f.bmp": (_encode(_picture("L", seed=7), "BMP"), None, "BMP"),
        "top.png": (_encode(_picture(seed=8), "PNG"), None, "PNG"),
        "cat/html.jpg": (BAD_BYTES["UNDECODABLE_IMAGE"][0], "UNDECODABLE_IMAGE", None),
        "cat/empty.png": (b"", "UNDECODABLE_IMAGE", None),
        "dog/trunc.png": (_truncated("PNG"), "TRUNCATED_IMAGE", None),
        "dog/bomb.png": (_png_claiming(100_000, 100_000), "PIXEL_LIMIT", None),
        "bird/icon.png": (_encode(_picture(), "ICO"), "UNSUPPORTED_FORMAT", None),
        "bird/big.bmp": (_encode(_picture(size=(100, 100)), "BMP"), "FILE_TOO_LARGE", None),
    }
    for rel, (data, _, _) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    # Not inputs: no image by name or content (the stage quarantines it as
    # UNSUPPORTED_FILE), and hidden files.
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(_encode(_picture(), "PNG"))
    return {_uri(root / rel): (reason, fmt) for rel, (_, reason, fmt) in files.items()}


@pytest.fixture(scope="module")
def fixture_run(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("images_in")
    expected = _write_fixture(root)
    # FILE_TOO_LARGE is decided from the listing: such a file is never read (see
    # tests/ingest/test_spark_io.py, which reads around a 3 GiB file).
    result = ingest_images(spark, CFG, [Location(str(root))])
    curated, quarantine = result.curated.collect(), result.quarantine.collect()
    return {"root": root, "expected": expected, "result": result, "curated": curated,
            "quarantine": quarantine}


@pytest.mark.integration
# UNLABELED_IMAGE needs labels from a manifest (tests/ingest/test_image_formats.py);
# UNSUPPORTED_FILE is the stage's (tests/ingest/test_ingest_stage_inputs.py).
@pytest.mark.parametrize("reason", sorted(set(IMAGE_REASONS)
                                          - {"UNLABELED_IMAGE", "UNSUPPORTED_FILE"}))
def test_each_reason_at_its_source(fixture_run: dict[str, Any], reason: str) -> None:
    want = {s for s, (r, _) in fixture_run["expected"].items() if r == reason}
    got = {q["source"] for q in fixture_run["quarantine"] if q["reason"] == reason}
    assert want and got == want


@pytest.mark.integration
def test_outcome_of_every_file(fixture_run: dict[str, Any]) -> None:
    got = {q["source"]: (q["reason"], None) for q in fixture_run["quarantine"]}
    got.update({c["source"]: (None, c["format"]) for c in fixture_run["curated"]})
    assert got == fixture_run["expected"]
    result = fixture_run["result"]
    assert result.n_input == len(fixture_run["expected"])
    assert result.n_input == len(fixture_run["curated"]) + len(fixture_run["quarantine"])


@pytest.mark.integration
def test_curated_rows(fixture_run: dict[str, Any]) -> None:
    df = fixture_run["result"].curated
    assert [(f.name, f.dataType) for f in df.schema.fields] == list(CURATED_COLUMNS)
    root = fixture_run["root"]
    rows = {r["source"]: r for r in fixture_run["curated"]}
    labels = {s.removeprefix(_uri(root) + "/"): r["label"] for s, r in rows.items()}
    assert labels == {"cat/a.png": "cat", "cat/lie.jpg": "cat", "dog/b.jpeg": "dog",
                      "dog/nested/c.gif": "dog", "dog/d.webp": "dog", "bird/e.TIFF": "bird",
                      "bird/f.bmp": "bird", "top.png": None}
    for source, row in rows.items():
        data = Path(source.removeprefix("file://")).read_bytes()
        assert bytes(row["bytes"]) == data
        assert row["content_hash"] == hashlib.sha256(data).hexdigest()
        probe = probe_image(data, CFG.max_pixels, CFG.formats)
        assert (row["width"], row["height"], row["channels"], row["pixel_hash"]) == (
            probe["width"], probe["height"], probe["channels"], probe["pixel_hash"])
    assert rows[_uri(root / "bird/f.bmp")]["channels"] == 1
    assert len({r["image_id"] for r in rows.values()}) == len(rows)


@pytest.mark.integration
def test_quarantine_rows_are_readable(fixture_run: dict[str, Any]) -> None:
    by_source = {q["source"]: q for q in fixture_run["quarantine"]}
    root = fixture_run["root"]
    big = by_source[_uri(root / "bird/big.bmp")]
    assert big["raw"] == "30054 bytes (not read)" and "max_bytes 6,000" in big["detail"]
    html = BAD_BYTES["UNDECODABLE_IMAGE"][0]
    assert by_source[_uri(root / "cat/html.jpg")]["raw"] == f"{len(html)} bytes: {html!r}"
    assert "10,000,000,000 pixels" in by_source[_uri(root / "dog/bomb.png")]["detail"]
    assert "ICO" in by_source[_uri(root / "bird/icon.png")]["detail"]
    assert all(q["stage"] == "ingest" and q["detail"] for q in by_source.values())


@pytest.mark.integration
def test_deterministic_and_relocatable(spark: Any, fixture_run: dict[str, Any],
                                       tmp_path: Path) -> None:
    moved = tmp_path / "somewhere" / "else"
    shutil.copytree(fixture_run["root"], moved)
    result = ingest_images(spark, CFG, [Location(str(moved))])
    old, new = _uri(fixture_run["root"]), _uri(moved)

    def rel(rows: list[Any], prefix: str) -> list[tuple[Any, ...]]:
        return sorted(tuple(v.replace(prefix, "<root>") if k == "source" else v
                            for k, v in r.asDict().items()) for r in rows)

    assert rel(result.curated.collect(), new) == rel(fixture_run["curated"], old)
    assert rel(result.quarantine.collect(), new) == rel(fixture_run["quarantine"], old)


@pytest.mark.unit
def test_listed_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm",
            ".pgm", ".pbm", ".ico"} <= set(IMAGE_EXTENSIONS)


@pytest.mark.integration
def test_synth_ground_truth(spark: Any, tmp_path: Path) -> None:
    synth = pytest.importorskip("pipeline.synth")
    gt = synth.generate(tmp_path, scale=0.1, seed=5, modalities=("images",))
    result = ingest_images(spark, ImageInputConfig(), [Location(str(tmp_path / "images"))])
    quarantine = {(q["source"], q["reason"]) for q in result.quarantine.collect()}
    want = {(_uri(tmp_path / b.file), b.reason) for b in gt.bad_for("images")}
    assert quarantine == want
    curated = {r["source"]: r for r in result.curated.drop("bytes").collect()}
    assert result.n_input == gt.n_records["images"] == len(curated) + len(quarantine)
    assert len(curated) == gt.n_good["images"]
    assert gt.extension_lies
    for lie in gt.extension_lies:
        assert curated[_uri(tmp_path / lie.file)]["format"] == lie.true_format
    for source, row in curated.items():
        assert row["label"] == Path(source).parent.name
    assert {r["label"] for r in curated.values()} == set(gt.image_classes)
