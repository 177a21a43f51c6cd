"""Hostile image inputs through ingest and dedup: every file gets its expected fate.

The corpus is built here in a temporary folder (tens of KB): broken, truncated, oversized
in bytes and in claimed pixels, lying about their type, in formats not allowed, and named
to break paths. `expected` maps each file (relative path) to the reason it must be
quarantined with, or None when it must be curated. The one test runs `ingest/images` and
`dedup/images` through the runner: no stage fails, every file comes out with its expected
reason, nothing else is curated, and dedup accounts for every curated image.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.dedup.stage import dedup_stage
from pipeline.ingest.stage import ingest_stage
from pipeline.orchestrator import run_pipeline
from pipeline.orchestrator.stages import synth_stage
from pipeline.storage import Location, RunPaths, published_files, verify_stage

pytestmark = pytest.mark.integration

MAX_BYTES, MAX_PIXELS = 20_000, 1_000_000
UNDECODABLE, TRUNCATED, PIXELS, UNSUPPORTED, TOO_LARGE = (
    "UNDECODABLE_IMAGE", "TRUNCATED_IMAGE", "PIXEL_LIMIT", "UNSUPPORTED_FORMAT",
    "FILE_TOO_LARGE")


def _encode(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB pixels and holds no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _corrupt_idat(png: bytes, fix_crc: bool) -> bytes:
    """`png` with bytes of its first IDAT chunk's deflate data zeroed; its CRC recomputed
    (a broken pixel stream behind a valid chunk) or left stale (a checksum error)."""
    data = bytearray(png)
    at = data.index(b"IDAT")
    length = struct.unpack(">I", data[at - 4:at])[0]
    data[at + 8:at + 4 + length] = b"\x00" * (length - 4)
    if fix_crc:
        data[at + 4 + length:at + 8 + length] = struct.pack(
            ">I", zlib.crc32(bytes(data[at:at + 4 + length])) & 0xFFFFFFFF)
    return bytes(data)


def _corpus() -> dict[str, tuple[bytes, str | None]]:
    good = _encode(_noise(16, 12, 1), "PNG")
    photo = _encode(_noise(40, 30, 2), "JPEG", quality=90)
    gif = _encode(_noise(8, 8, 3).convert("P"), "GIF")
    frames = [_noise(6, 6, s).convert("P") for s in (4, 5, 6)]
    anim = io.BytesIO()
    frames[0].save(anim, format="GIF", save_all=True, append_images=frames[1:])
    bad_crc = _corrupt_idat(_encode(_noise(16, 12, 7), "PNG"), fix_crc=False)
    bad_zlib = _corrupt_idat(_encode(_noise(16, 12, 8), "PNG"), fix_crc=True)
    meta = Image.new("RGB", (5, 5), (1, 2, 3))
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 5000)
    return {
        "cat/good.png": (good, None),
        # Broken and truncated.
        "cat/truncated.png": (good[: len(good) * 2 // 3], TRUNCATED),
        "cat/truncated.jpg": (photo[: len(photo) // 2], TRUNCATED),
        "cat/header_only.png": (_png_header(16, 12), TRUNCATED),
        "cat/bad_zlib.png": (bad_zlib, TRUNCATED),
        "cat/bad_crc.png": (bad_crc, TRUNCATED),
        "cat/empty.png": (b"", UNDECODABLE),
        "cat/noise.jpg": (np.random.default_rng(9).bytes(2000), UNDECODABLE),
        "cat/signature_only.png": (b"\x89PNG\r\n\x1a\n", UNDECODABLE),
        # Lying about their type: text, SVG and HTML named as images; real images
        # under another format's extension (the bytes decide).
        "cat/text.png": (b"hello, I am not an image\n", UNDECODABLE),
        "cat/vector.png": (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
                           UNDECODABLE),
        "cat/png_named.jpg": (_encode(_noise(7, 7, 10), "PNG"), None),
        "cat/gif_named.png": (gif, None),
        # Formats not allowed here (inputs.images.formats: PNG, JPEG, GIF).
        "cat/real.bmp": (_encode(_noise(4, 4, 11), "BMP"), UNSUPPORTED),
        "cat/real.tif": (_encode(_noise(4, 4, 12), "TIFF"), UNSUPPORTED),
        "cat/bmp_named.png": (_encode(_noise(4, 4, 13), "BMP"), UNSUPPORTED),
        # Oversized: bytes over max_bytes (never read), headers claiming too many pixels.
        "cat/big_file.png": (_encode(_noise(100, 100, 14), "PNG"), TOO_LARGE),
        "cat/bomb_2x.png": (_png_header(5000, 5000), PIXELS),  # over 2x: Pillow refuses
        "cat/bomb_1x.png": (_png_header(1200, 1000), PIXELS),  # between 1x and 2x
        # Odd but valid: animation, 1x1, 16-bit grey, CMYK, palette + alpha, big metadata,
        # trailing junk after IEND (a polyglot), an upper-case extension.
        "dog/anim.gif": (anim.getvalue(), None),
        "dog/one.png": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), None),
        "dog/grey16.png": (_encode(Image.new("I;16", (4, 4), 4000), "PNG"), None),
        "dog/cmyk.jpg": (_encode(_noise(8, 8, 15).convert("CMYK"), "JPEG"), None),
        "dog/palette.png": (_encode(_noise(6, 6, 16).convert("P"), "PNG", transparency=0),
                            None),
        "dog/meta.png": (_encode(meta, "PNG", pnginfo=info), None),
        "dog/polyglot.png": (good + b"PK\x03\x04<html>junk</html>", None),
        "dog/UPPER.PNG": (_encode(_noise(5, 5, 17), "PNG"), None),
        # Copies for dedup: the same bytes, the same pixels.
        "dog/copy.png": (good, None),
        # Names that break paths (glob characters: GLOB_NAMES), a class folder with
        # a space, a file directly in the root (no class).
        "my class/a b.png": (_encode(_noise(5, 6, 18), "PNG"), None),
        "ünï/ünï©ødé.png": (_encode(_noise(6, 5, 19), "PNG"), None),
        "cat/100%.png": (_encode(_noise(5, 7, 20), "PNG"), None),
        "cat/e#frag.png": (_encode(_noise(7, 5, 21), "PNG"), None),
        "root.png": (_encode(_noise(3, 3, 22), "PNG"), None),
    }


GLOB_NAMES = ("cat/a[1].png", "cat/a1.png", "cat/b{x,y}.png", "cat/c?.png", "cat/d*.png")


def _mismatches(got: dict[str, str | None], expected: dict[str, str | None]
                ) -> dict[str, tuple[str | None, str | None]]:
    """{record: (its fate, the expected fate)} where they differ ("absent": no fate)."""
    return {k: (got.get(k, "absent"), expected.get(k, "absent"))
            for k in sorted(set(got) | set(expected))
            if got.get(k, "absent") != expected.get(k, "absent")}


def _rows(stage: Location, prefix: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for loc in published_files(stage, prefix=prefix, suffix=".parquet"):
        with loc.open() as fh:
            rows += pq.read_table(fh).to_pylist()
    return rows


def _run(tmp: Path) -> tuple[dict[str, str | None], dict[str, Any]]:
    raw = tmp / "raw"
    # Glob characters in names are literal names (Spark's reader would expand them).
    corpus = {**_corpus(), **{n: (_encode(_noise(4 + i, 4, 30 + i), "PNG"), None)
                              for i, n in enumerate(GLOB_NAMES)}}
    for name, (data, _) in corpus.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        (raw / name).write_bytes(data)
    cfg = config_from_dict({
        "run_id": "hostile", "storage": {"root": f"file://{tmp / 'out'}"},
        "modalities": ["images"], "spark": {"shuffle_partitions": 2},
        "inputs": {"images": {"paths": [str(raw)], "max_bytes": MAX_BYTES,
                              "max_pixels": MAX_PIXELS, "formats": ["PNG", "JPEG", "GIF"]}},
        "gates": {"max_quarantine_rate": 1.0, "max_duplicate_rate": 1.0}})
    outcomes = run_pipeline(cfg, [synth_stage(), ingest_stage("images"), dedup_stage("images")])
    states = {o.name: o.state for o in outcomes if o.name != "synth"}
    assert states == {"ingest/images": "ran", "dedup/images": "ran"}
    run = RunPaths(Location(f"file://{tmp / 'out'}"), "hostile")
    prefix = f"file://{raw}/"

    def rel(source: str) -> str:
        assert source.startswith(prefix), source
        return source[len(prefix):]

    ingest, dedup = run.stage("ingest/images"), run.stage("dedup/images")
    curated = _rows(ingest, "curated/")
    got: dict[str, str | None] = {rel(q["source"]): q["reason"]
                                  for q in _rows(ingest, "quarantine/")}
    got.update({rel(c["source"]): None for c in curated})
    return {n: r for n, (_, r) in corpus.items()}, {
        "got": got, "curated": curated, "ingest": verify_stage(ingest),
        "dedup": verify_stage(dedup), "kept": _rows(dedup, "data/"),
        "dups": _rows(dedup, "duplicates/"), "rel": rel}


def test_hostile_images_through_ingest_and_dedup(spark: Any, tmp_path: Path) -> None:
    expected, out = _run(tmp_path)
    assert len(expected) >= 15
    assert _mismatches(out["got"], expected) == {}
    counts = out["ingest"].row_counts
    assert counts["input"] == len(expected) == counts["curated"] + counts["quarantined"]
    by_name = {out["rel"](c["source"]): c for c in out["curated"]}
    assert by_name["cat/png_named.jpg"]["format"] == "PNG"
    assert by_name["cat/gif_named.png"]["format"] == "GIF"
    assert by_name["my class/a b.png"]["label"] == "my class"
    assert by_name["root.png"]["label"] is None
    # Dedup accounts for every curated image; the byte copy and the polyglot (same
    # pixels, other bytes) fold into cat/good.png's cluster.
    kept = {r["image_id"] for r in out["kept"]}
    dropped = {d["dropped_id"] for d in out["dups"]}
    assert kept.isdisjoint(dropped) and kept | dropped == {c["image_id"]
                                                           for c in out["curated"]}
    cluster = {r["image_id"]: r["cluster_id"] for r in out["kept"]}
    cluster.update({d["dropped_id"]: d["cluster_id"] for d in out["dups"]})
    same = {cluster[by_name[n]["image_id"]] for n in ("cat/good.png", "dog/copy.png",
                                                      "dog/polyglot.png")}
    assert len(same) == 1
