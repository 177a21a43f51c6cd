"""Image batch decoding, normalization and augmentation for the image task.

Decoding is one Pillow C call per image (the only per-row Python on the hot path; an
encoded PNG/JPEG cannot be decoded any other way). Each image is resized in Pillow to
`size x size` right after decoding, so that everything after that is a stack of equal-
shaped arrays handled in batch by numpy and torch. Resizing in Pillow rather than with a
batched `F.interpolate` because the sources differ in size (a batched interpolate needs
them equal first), and Pillow's resampling filters antialias when shrinking, and JPEG
`draft` mode can decode straight at a reduced scale, which is much cheaper for big photos.

Pixel limit: curated rows passed the ingest check against inputs.images.max_pixels, so a
row above it here means the data and the config disagree. That is an error, not a row to
skip silently: `decode_images` raises a ValueError naming the row before decoding pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

#: per-channel normalization constants: x in [0, 1] -> (x - 0.5) / 0.5 in [-1, 1].
#: Fixed rather than computed from the data: the synthetic and real sources differ, and
#: with GroupNorm in the model exact dataset statistics buy nothing.
MEAN = 0.5
STD = 0.5


class ImageDecodeError(ValueError):
    """A curated image that cannot be used: above the pixel limit, or undecodable."""


def _row_name(i: int, ids: Sequence[Any] | None) -> str:
    return f"row {i}" + (f" (image_id {ids[i]!s})" if ids is not None else "")


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB version of any mode; transparent pixels are composited onto white (dropping
    alpha would expose whatever colour the encoder left under it, often black)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def decode_images(blobs: Sequence[bytes] | np.ndarray, size: int, max_pixels: int,
                  ids: Sequence[Any] | None = None) -> np.ndarray:
    """Decode encoded images into a uint8 array [B, size, size, 3] (RGB).

    Every image is converted to RGB (grayscale and palette images too) and resized to
    size x size with a bilinear, antialiasing filter (aspect ratio is not kept: the
    whole image stays in view). Raises ValueError naming the row (and its `ids` entry
    when given), as ImageDecodeError, for an image above `max_pixels` or one Pillow
    cannot decode.
    """
    # Pillow's own decompression-bomb guard, at the limit ingest used. Process-global,
    # but every caller in the pipeline sets the same configured value.
    Image.MAX_IMAGE_PIXELS = max_pixels
    out = np.empty((len(blobs), size, size, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        # Between 1x and 2x the limit Pillow only warns at open(); the explicit check
        # below turns that into an error, so the warning would just be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, blob in enumerate(blobs):
            _decode_one(out, i, blob, size, max_pixels, ids)
    return out


def _decode_one(out: np.ndarray, i: int, blob: bytes, size: int, max_pixels: int,
                ids: Sequence[Any] | None) -> None:
    """Decode `blob` into out[i]: one C decode and one C resize."""
    try:
        with Image.open(BytesIO(blob)) as im:  # reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise ImageDecodeError(
                    f"{_row_name(i, ids)}: {w}x{h} = {w * h} pixels exceeds "
                    f"inputs.images.max_pixels={max_pixels}; curated images are checked "
                    "at ingest, so the data and the config disagree")
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            rgb = _to_rgb(im)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(rgb, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow raises DecompressionBombError itself at open() past twice the limit.
        raise ImageDecodeError(f"{_row_name(i, ids)}: cannot decode image: {exc}") from exc


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, S, S, 3] -> float32 [B, 3, S, S] in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> roughly zero-mean, unit-range input for the network."""
    return (x - MEAN) / STD


def augment(x: torch.Tensor, generator: torch.Generator | None = None,
            min_scale: float = 0.7, brightness: float = 0.15) -> torch.Tensor:
    """Random training augmentation of a [B, C, H, W] batch in [0, 1], all in batch.

    Per image: a random resized crop (a square window of side min_scale..1 of the image,
    at a random position inside it, resized back to full size), a horizontal flip with
    probability 1/2, and a brightness factor in [1 - brightness, 1 + brightness]. The
    crop and the flip are one affine sampling grid, so the whole batch is one
    `grid_sample` call. All randomness comes from `generator`: the same generator state
    gives the same batch.
    """
    b = x.shape[0]
    r = torch.rand(b, 5, generator=generator)
    scale = min_scale + (1.0 - min_scale) * r[:, 0]
    # A window of relative side `scale` fits anywhere with its centre within +-(1-scale)
    # (grid coordinates span [-1, 1]), so no sample falls outside the image.
    tx = (2 * r[:, 1] - 1) * (1 - scale)
    ty = (2 * r[:, 2] - 1) * (1 - scale)
    flip = torch.where(r[:, 3] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = scale * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = scale
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid.to(x.device), mode="bilinear", padding_mode="border",
                        align_corners=False)
    factor = 1.0 + brightness * (2 * r[:, 4] - 1)
    return (out * factor.to(x)[:, None, None, None]).clamp_(0.0, 1.0)
