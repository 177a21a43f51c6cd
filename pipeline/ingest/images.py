"""Image ingest: image files in class folders -> curated images + quarantine.

Every listed file is one record and lands in exactly one output. The checks, in order:

- FILE_TOO_LARGE: `length > cfg.max_bytes`, decided from the file listing; such a file
  is never read at all (`read_files(max_bytes=...)`);
- UNDECODABLE_IMAGE: Pillow recognises no image format in the bytes (the format always
  comes from the bytes, never from the file name);
- PIXEL_LIMIT: the header claims more than `cfg.max_pixels` pixels, checked on the header
  alone, so a lying header never makes Pillow allocate; Pillow's own decompression-bomb
  guard (`Image.MAX_IMAGE_PIXELS`, set to the same limit) is the second line of defence;
- UNSUPPORTED_FORMAT: a recognised format that is not in `cfg.formats` (never decoded);
- TRUNCATED_IMAGE: the header parses but decoding the pixels fails (Pillow's
  LOAD_TRUNCATED_IMAGES is forced off, so a short file is an error, not grey pixels).

Decoding is one Pillow call per image inside a vectorized Arrow UDF: there is no
Spark-native decoder, and per-image C decoding is the unavoidable cost. Only the small
metadata struct comes back from Python; the bytes stay in the JVM, and `content_hash` is
Spark's own sha2 over them.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import ImageInputConfig
from pipeline.ingest.common import IngestResult, quarantine_rows
from pipeline.ingest.lines import input_roots, list_input_files, relative_key, stable_id
from pipeline.spark_io import read_files
from pipeline.storage import Location

# Files are selected by these extensions only (a folder's README or .DS_Store is not an
# image record); what they hold is then decided from their bytes.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")

CURATED_COLUMNS: tuple[tuple[str, T.DataType], ...] = (
    ("image_id", T.StringType()),
    ("source", T.StringType()),
    ("bytes", T.BinaryType()),
    ("format", T.StringType()),
    ("width", T.IntegerType()),
    ("height", T.IntegerType()),
    ("channels", T.IntegerType()),
    ("content_hash", T.StringType()),
    ("pixel_hash", T.StringType()),
    ("label", T.StringType()),
)

_PROBE_FIELDS = (("format", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                 ("channels", pa.int32()), ("pixel_hash", pa.string()), ("reason", pa.string()),
                 ("detail", pa.string()), ("head", pa.string()))
PROBE_TYPE = T.StructType([
    T.StructField("format", T.StringType()), T.StructField("width", T.IntegerType()),
    T.StructField("height", T.IntegerType()), T.StructField("channels", T.IntegerType()),
    T.StructField("pixel_hash", T.StringType()), T.StructField("reason", T.StringType()),
    T.StructField("detail", T.StringType()), T.StructField("head", T.StringType()),
])
# Pillow names a multi-picture JPEG (what many phone cameras write) MPO; its bytes are a
# JPEG whose first frame is the picture, so it counts as JPEG.
_FORMAT_ALIASES = {"MPO": "JPEG"}
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _error(exc: BaseException) -> str:
    """An exception as `Type: message`, without object addresses (which differ per run)."""
    return f"{type(exc).__name__}: {_ADDRESS.sub('', str(exc))}"[:300]


def _head(data: bytes) -> str:
    """A short readable view of a file's first 64 bytes, for quarantine `raw`."""
    return f"{len(data)} bytes: {data[:64]!r}"


def _canonical(im: Any) -> Any:
    """The image in the mode its pixels are compared in: palette images are expanded, so
    a palette change re-encoding the same picture keeps its pixel hash."""
    if im.mode == "P":
        return im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode == "PA":
        return im.convert("RGBA")
    return im


def probe_image(data: bytes, max_pixels: int, formats: Sequence[str]) -> dict[str, Any]:
    """Identify, check and decode one image; a dict with the `PROBE_TYPE` fields.

    `reason` is null for a good image. `channels` is the band count of the decoded mode
    (1 for L/P/I/F, 2 for LA/PA, 3 for RGB/YCbCr, 4 for RGBA/CMYK). `pixel_hash` is the
    hex SHA-256 of `mode WxH` and the decoded bytes of the first frame (palette modes are
    expanded to RGB/RGBA first), so two encodings of identical pixels share it."""
    from PIL import Image, ImageFile

    # Set on every call: another library in this worker may have changed either global.
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    out: dict[str, Any] = dict.fromkeys(name for name, _ in _PROBE_FIELDS)

    def bad(reason: str, detail: str) -> dict[str, Any]:
        out.update(reason=reason, detail=detail, head=_head(data))
        return out

    # catch_warnings swaps process-wide state; fine with Spark's one task thread per
    # Python worker.
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the limit Pillow only warns; the size check below rejects
            # those with a better sentence. Above 2x it raises before returning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # lazy: parses the header, decodes nothing
    except Image.DecompressionBombError as exc:
        match = _BOMB_PIXELS.search(str(exc))
        claimed = f"{int(match.group(1)):,}" if match else "more than twice max_pixels"
        return bad("PIXEL_LIMIT", f"header claims {claimed} pixels > max_pixels "
                                  f"{max_pixels:,}; nothing was decoded")
    except Image.UnidentifiedImageError:
        return bad("UNDECODABLE_IMAGE", "the bytes match no image format Pillow knows")
    except Exception as exc:  # a plugin recognised its magic but the header is broken
        return bad("UNDECODABLE_IMAGE", f"the image header does not parse ({_error(exc)})")
    with im:
        fmt = _FORMAT_ALIASES.get(im.format or "", im.format or "unknown")
        width, height = im.size
        out.update(format=fmt, width=width, height=height)
        if width * height > max_pixels:
            return bad("PIXEL_LIMIT", f"header claims {width}x{height} = {width * height:,} "
                                      f"pixels > max_pixels {max_pixels:,}; nothing was decoded")
        if fmt not in formats:
            return bad("UNSUPPORTED_FORMAT", f"the bytes are a {fmt} image; that format is not in "
                                             f"inputs.images.formats ({', '.join(formats)})")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            return bad("PIXEL_LIMIT", f"a frame exceeds max_pixels {max_pixels:,} "
                                      f"({_error(exc)})")
        except Exception as exc:  # truncated streams raise OSError, broken ones others
            return bad("TRUNCATED_IMAGE", f"{fmt} header parses ({width}x{height} {im.mode}) "
                                          f"but the pixel data does not decode "
                                          f"({_error(exc)})")
        canon = _canonical(im)
        digest = hashlib.sha256(f"{canon.mode} {width}x{height}\n".encode())
        digest.update(canon.tobytes())
        out.update(channels=len(im.getbands()), pixel_hash=digest.hexdigest())
    return out


def _probe_udf(max_pixels: int, formats: Sequence[str]) -> Any:
    allowed = tuple(formats)

    def probe(content: pa.Array) -> pa.Array:
        rows = [probe_image(b or b"", max_pixels, allowed) for b in content.to_pylist()]
        return pa.array(rows, type=pa.struct(list(_PROBE_FIELDS)))

    # The stubs want functionType, which PySpark then warns about: the hints say SCALAR.
    return F.arrow_udf(probe, PROBE_TYPE)  # type: ignore[call-overload]


def _label(key: Column) -> Column:
    """ImageFolder's class: the first folder below the input root (`<i>/<class>/...`);
    null for a file directly in the root, which ImageFolder would not load at all."""
    parts = F.split(key, "/")
    return F.when(F.size(parts) >= 3, F.element_at(parts, 2))


def ingest_images(spark: SparkSession, cfg: ImageInputConfig,
                  inputs: Sequence[Location]) -> IngestResult:
    """Read image files (by `IMAGE_EXTENSIONS`, recursively) under `inputs` into curated
    image rows (`CURATED_COLUMNS`) and quarantine rows; see the module docstring.

    `image_id` is the first 16 hex digits of SHA-256 over `<i>/<path relative to input i>`;
    `content_hash` is the hex SHA-256 of the file's bytes; `label` is the class folder.
    `n_input` is the number of files listed, so every listed file must come out once;
    `source` is the file URL (`file:///x/cat/1.png`)."""
    files = list_input_files(inputs, IMAGE_EXTENSIONS)
    uri = F.col("path")  # the file URL, as list_input_files spells it
    key = relative_key(uri, input_roots(inputs))
    listed = read_files(spark, files, max_bytes=cfg.max_bytes).select(
        "path", "content", "length", uri.alias("source"), key.alias("key"))

    # Files over max_bytes were never read: their content is null, `length` is listed.
    too_large = quarantine_rows(
        listed.filter(F.col("length") > cfg.max_bytes), stage="ingest",
        source=F.col("source"), reason=F.lit("FILE_TOO_LARGE"),
        detail=F.format_string(f"the file is %d bytes > max_bytes {cfg.max_bytes:,}; "
                               "it was not read", F.col("length")),
        raw=F.format_string("%d bytes (not read)", F.col("length")))

    probed = listed.filter(F.col("length") <= cfg.max_bytes).withColumn(
        "p", _probe_udf(cfg.max_pixels, cfg.formats)(F.col("content")))
    p = F.col("p")
    curated = probed.filter(p.getField("reason").isNull()).select(
        stable_id(F.col("key")).alias("image_id"), "source",
        F.col("content").alias("bytes"),
        *[p.getField(name).alias(name)
          for name in ("format", "width", "height", "channels")],
        F.sha2(F.col("content"), 256).alias("content_hash"),
        p.getField("pixel_hash").alias("pixel_hash"),
        _label(F.col("key")).alias("label"),
    )
    bad = quarantine_rows(
        probed.filter(p.getField("reason").isNotNull()), stage="ingest",
        source=F.col("source"), reason=p.getField("reason"), detail=p.getField("detail"),
        raw=p.getField("head"))
    return IngestResult(curated=curated, quarantine=too_large.unionByName(bad), shared=probed,
                        n_input=len(files))
