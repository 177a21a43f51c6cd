"""Synthetic image folders `images/<label>/` drawn with Pillow, with planted copies, bad files.

Each class is a shape (circle, square, triangle, stripes) drawn at a random size, place,
rotation and colour over a noisy gradient, so a small CNN can learn the classes but not from
a single trivial cue. Files are PNG or JPEG, RGB or grayscale; Pillow writes neither
timestamps nor other metadata here, so the bytes depend only on the seed.
"""

from __future__ import annotations

import io
import math
import pathlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipeline.synth.common import (
    BadRecord,
    ExtensionLie,
    GroundTruth,
    ModalityResult,
    PlantedDuplicate,
    modality_rng,
    rel,
    scaled,
)

GT = GroundTruth
CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "stripes")
_EXT = {"PNG": "png", "JPEG": "jpg"}
_NOT_AN_IMAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
    b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p>"
    b"</body></html>\n"
)
# Header sizes far past Pillow's decompression-bomb limit (~179M pixels) and any sane
# ingest limit, while the file itself stays a few dozen bytes.
_HUGE_SIZES = ((100_000, 100_000), (65_535, 80_000), (200_000, 50_000))


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=3).astype(np.float64)


def draw_image(rng: np.random.Generator, label: str) -> Image.Image:
    """One image of class `label` (RGB or L), 48-160 px on each side."""
    w, h = (int(v) for v in rng.integers(48, 161, size=2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    theta = float(rng.uniform(0, 2 * math.pi))
    ramp = xx * math.cos(theta) + yy * math.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    c1, c2 = _color(rng), _color(rng)
    bg = c1 * (1 - ramp[..., None]) + c2 * ramp[..., None]
    # Low-frequency blotches make backgrounds differ in the coarse structure a perceptual
    # hash sees, so distinct images of one class rarely collide under pHash dedup.
    for _ in range(3):
        fx, fy = rng.uniform(-1.5, 1.5, size=2) * 2 * math.pi
        wave = np.cos(fx * xx / w + fy * yy / h + float(rng.uniform(0, 2 * math.pi)))
        bg += wave[..., None] * rng.uniform(-45, 45, size=3)
    bg += rng.normal(0.0, float(rng.uniform(4, 14)), size=bg.shape)
    # The shape's colour is kept well away from the background so grayscale copies still
    # show it.
    mean_bg = bg.reshape(-1, 3).mean(axis=0)
    fg = _color(rng)
    for _ in range(20):
        if abs(fg.mean() - mean_bg.mean()) > 60:
            break
        fg = _color(rng)
    fill = tuple(int(v) for v in fg)
    side = min(w, h)

    if label == "stripes":
        # Smooth stripes at 7-11 cycles per image (in coordinates normalised to the image,
        # as a hash's square downscale sees them) sit above the 8x8 DCT band of a perceptual
        # hash and below the aliasing limit, so slight crops barely move the hash.
        cycles = float(rng.uniform(7, 11))
        phi = float(rng.uniform(0, math.pi))
        phase = 2 * math.pi * cycles * (xx / w * math.cos(phi) + yy / h * math.sin(phi))
        mix = 0.35 + 0.35 * np.cos(phase + float(rng.uniform(0, 2 * math.pi)))
        # Stripes fill a large disc, whose edge gives the coarse structure a perceptual
        # hash needs to be stable; stripes alone leave its low-frequency band near zero.
        r = float(rng.uniform(0.3, 0.45)) * side
        cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
        mix = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, mix, 0.0)[..., None]
        bg = (1 - mix) * bg + mix * fg
        im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    else:
        im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
        pen = ImageDraw.Draw(im)
        if label == "circle":
            r = float(rng.uniform(0.2, 0.42)) * side
            cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
            pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            n_corners = 4 if label == "square" else 3
            r = float(rng.uniform(0.25, 0.45)) * side
            cx, cy = float(rng.uniform(r, w - r)), float(rng.uniform(r, h - r))
            rot = float(rng.uniform(0, 2 * math.pi))
            pts = [
                (cx + r * math.cos(rot + 2 * math.pi * k / n_corners),
                 cy + r * math.sin(rot + 2 * math.pi * k / n_corners))
                for k in range(n_corners)
            ]
            pen.polygon(pts, fill=fill)
    return im.convert("L") if rng.random() < 0.25 else im


def encode(im: Image.Image, fmt: str, quality: int = 90) -> bytes:
    """PNG or JPEG bytes of `im`, with no metadata."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        im.save(buf, format="JPEG", quality=quality)
    else:
        im.save(buf, format="PNG")
    return buf.getvalue()


def huge_png(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR (with a valid CRC) claims `width` x `height` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _loads(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:  # any decode failure is what a truncated file should produce
        return False


@dataclass
class _File:
    label: str
    data: bytes
    ext: str
    idx: int = -1
    path: str = ""
    detail: str = ""


def _derived(rng: np.random.Generator, kind: str, data: bytes, fmt: str, q: int) -> _File:
    """The copy of an original for one duplicate kind (label filled in by the caller)."""
    if kind == GT.EXACT:
        return _File("", data, _EXT[fmt], detail="same bytes")
    with Image.open(io.BytesIO(data)) as src:
        im = src.copy()
    what = f"{fmt} {im.width}x{im.height}"
    if kind == GT.REENCODE:
        if fmt == "PNG" or rng.random() < 0.5:
            new_fmt = "JPEG" if fmt == "PNG" else "PNG"
            return _File("", encode(im, new_fmt, q), _EXT[new_fmt], detail=f"{what} -> {new_fmt}")
        new_q = q - 25 if q > 70 else q + 20
        return _File("", encode(im, "JPEG", new_q), "jpg", detail=f"{what} -> JPEG q={new_q}")
    if kind == GT.RESIZE:
        f = float(rng.uniform(0.5, 0.9))
        size = (max(8, round(im.width * f)), max(8, round(im.height * f)))
        return _File("", encode(im.resize(size, Image.Resampling.LANCZOS), fmt, q), _EXT[fmt],
                     detail=f"{what} -> {size[0]}x{size[1]}")
    if kind != GT.CROP:
        raise ValueError(f"unknown image duplicate kind {kind!r}")
    dx = max(1, round(im.width * float(rng.uniform(0.01, 0.02))))
    dy = max(1, round(im.height * float(rng.uniform(0.01, 0.02))))
    box = (dx, dy, im.width - dx, im.height - dy)
    return _File("", encode(im.crop(box), fmt, q), _EXT[fmt],
                 detail=f"{what} minus {dx} px left/right, {dy} px top/bottom")


def generate_images(out_dir: pathlib.Path, scale: float, seed: int) -> ModalityResult:
    """Write `out_dir/images/<label>/` and return what was planted there."""
    rng = modality_rng(seed, "images")
    root = out_dir / "images"
    n_total = scaled(200, scale, 60)
    n_trunc, n_undec, n_huge = scaled(4, scale, 2), scaled(2, scale, 2), scaled(2, scale, 2)
    n_per_kind = scaled(5, scale, 2)
    n_lies = scaled(3, scale, 2)
    dup_kinds = (GT.EXACT, GT.REENCODE, GT.RESIZE, GT.CROP)
    n_base = n_total - n_trunc - n_undec - n_huge - n_per_kind * len(dup_kinds)

    files: list[_File] = []
    meta: list[tuple[str, int]] = []  # (format, jpeg quality) of each base file
    for i in range(n_base):
        label = CLASSES[i % len(CLASSES)]
        fmt = "PNG" if rng.random() < 0.5 else "JPEG"
        q = int(rng.integers(75, 96))
        files.append(_File(label, encode(draw_image(rng, label), fmt, q), _EXT[fmt]))
        meta.append((fmt, q))

    # Base files are drawn in class order; choosing plants by random index spreads them
    # over all classes.
    picks = [int(i) for i in rng.choice(n_base, size=n_lies + n_per_kind * 4, replace=False)]
    lies = picks[:n_lies]
    for n, j in enumerate(lies):
        # Alternate so both directions occur: PNG bytes named .jpg, JPEG bytes named .png.
        want = "PNG" if n % 2 == 0 else "JPEG"
        if meta[j][0] != want:
            with Image.open(io.BytesIO(files[j].data)) as src:
                files[j].data = encode(src.copy(), want, meta[j][1])
            meta[j] = (want, meta[j][1])
        files[j].ext = "jpg" if want == "PNG" else "png"

    pairs: list[tuple[_File, _File, str]] = []
    for j, orig in enumerate(picks[n_lies:]):
        kind = dup_kinds[j // n_per_kind]
        copy = _derived(rng, kind, files[orig].data, *meta[orig])
        copy.label = files[orig].label
        pairs.append((files[orig], copy, kind))

    bad: list[tuple[_File, str, str]] = []
    for j in range(n_trunc):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        fmt = ("PNG", "JPEG")[j % 2]
        data = encode(draw_image(rng, label), fmt, 85)
        frac = float(rng.uniform(0.4, 0.6))
        while _loads(data[: int(len(data) * frac)]) and frac > 0.1:
            frac -= 0.1
        bad.append((_File(label, data[: int(len(data) * frac)], _EXT[fmt]), GT.TRUNCATED_IMAGE,
                    f"first {frac:.0%} of a {fmt}"))
    for j in range(n_undec):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        if j % 2 == 0:
            bad.append((_File(label, _NOT_AN_IMAGE, "jpg"), GT.UNDECODABLE_IMAGE,
                        "HTML error page saved as .jpg"))
        else:
            bad.append((_File(label, rng.bytes(int(rng.integers(200, 2000))), "png"),
                        GT.UNDECODABLE_IMAGE, "random bytes saved as .png"))
    for j in range(n_huge):
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        w, h = _HUGE_SIZES[j % len(_HUGE_SIZES)]
        bad.append((_File(label, huge_png(w, h), "png"), GT.PIXEL_LIMIT,
                    f"IHDR claims {w}x{h}"))

    everything = files + [p[1] for p in pairs] + [b[0] for b in bad]
    for idx, k in enumerate(rng.permutation(len(everything))):
        f = everything[int(k)]
        f.idx = idx
        path = root / f.label / f"img-{seed}-{idx:06d}.{f.ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f.data)
        f.path = rel(path, out_dir)

    def stem(f: _File) -> str:
        return f"img-{seed}-{f.idx:06d}"

    result = ModalityResult(n_records=len(everything), image_classes=list(CLASSES))
    for f, reason, detail in bad:
        result.bad.append(BadRecord("images", f.path, None, reason, detail, stem(f)))
    result.bad.sort(key=lambda b: b.file)
    for first, copy, kind in pairs:
        result.duplicates.append(PlantedDuplicate(
            "images", kind, first.path, None, stem(first), copy.path, None, stem(copy),
            detail=copy.detail))
    for j in lies:
        result.extension_lies.append(ExtensionLie(files[j].path, meta[j][0], files[j].ext))
    result.extension_lies.sort(key=lambda e: e.file)
    return result
