"""Image ingest: image files in class folders -> curated images + quarantine.

Every listed file is one record and lands in exactly one output. Files are judged by
content, not by name: a file named as an image (`IMAGE_EXTENSIONS`) is probed, and of the
other files the listing finds (`claim_images`, also the stage's `claim_files` hook) one is
probed when its extension is one Pillow reads for an allowed format (`.tga` with TGA
allowed) or its first 16 bytes carry an image signature by Pillow's own identification
(`sniff_format`): a JPEG saved as `.svg` is ingested as JPEG. The stage quarantines the
rest as UNSUPPORTED_FILE. The checks, in order:

- FILE_TOO_LARGE: `length > cfg.max_bytes`, decided from the file listing; such a file
  is never read at all (`read_files(max_bytes=...)`);
- UNDECODABLE_IMAGE: Pillow recognises no image format in the bytes (the format always
  comes from the bytes, never from the file name);
- PIXEL_LIMIT: the header claims more than `cfg.max_pixels` pixels, checked on the header
  alone, so a lying header never makes Pillow allocate; Pillow's own decompression-bomb
  guard (`Image.MAX_IMAGE_PIXELS`, set to the same limit) is the second line of defence;
- UNSUPPORTED_FORMAT: a recognised format that is not in `cfg.formats` (never decoded);
- TRUNCATED_IMAGE: the header parses but decoding the pixels fails (Pillow's
  LOAD_TRUNCATED_IMAGES is forced off, so a short file is an error, not grey pixels);
- UNLABELED_IMAGE (`labels.source: manifest` only): a good image the manifest does not
  list, or lists with an empty label.

Labels (`cfg.labels`): the class folder (default), a manifest file, or none (null).
The detected format is the `format` column; `figures()` counts formats, files whose
extension names another format (`extension_mismatch`) and files read by content only.

Decoding is one Pillow call per image inside a vectorized Arrow UDF: there is no
Spark-native decoder, and per-image C decoding is the unavoidable cost. Only the small
metadata struct comes back from Python; the bytes stay in the JVM, and `content_hash` is
Spark's own sha2 over them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import posixpath
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipeline.config import ImageInputConfig
from pipeline.ingest.common import IngestResult, quarantine_rows
from pipeline.ingest.lines import input_roots, relative_key, stable_id
from pipeline.modalities.images import EXTENSIONS
from pipeline.spark_io import read_files
from pipeline.storage import Location, to_url

# The usual extension(s) of each common format (pipeline.modalities.images.EXTENSIONS);
# `image_extensions()` adds every other one Pillow reads.
IMAGE_EXTENSIONS = tuple(f".{e}" for exts in EXTENSIONS.values() for e in exts)
#: how many leading bytes identify a format (what Image.open hands each plugin's check)
SNIFF_BYTES = 16

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


def image_extensions() -> dict[str, str]:
    """Every file extension Pillow reads (lower-case, with the dot) -> the format it
    names, `IMAGE_EXTENSIONS` included ('.pgm' -> 'PPM', '.dib' -> 'BMP')."""
    from PIL import Image

    Image.init()
    out = {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items()
           if fmt in Image.OPEN}
    out.update({f".{e}": fmt for fmt, exts in EXTENSIONS.items() for e in exts})
    return out


def sniff_format(head: bytes) -> str | None:
    """The image format whose signature `head` (a file's first `SNIFF_BYTES`) carries,
    asked of each Pillow plugin's own identification check (what `Image.open` runs
    first); None when none matches. Plugins without such a check are not asked: they
    would claim any bytes."""
    from PIL import Image

    Image.init()
    for fmt in Image.ID:
        _, accept = Image.OPEN[fmt]
        if accept is None:
            continue
        try:
            if accept(head[:SNIFF_BYTES]):
                return _FORMAT_ALIASES.get(fmt, fmt)
        except Exception:  # a check that cannot handle a short head: not a match
            continue
    return None


def _read_head(loc: Location) -> bytes:
    with loc.open("rb") as fh:
        return bytes(fh.read(SNIFF_BYTES))


class LabelsManifestError(ValueError):
    """A labels manifest that cannot be used: unreadable, a missing column, a path listed
    twice with different labels."""


def _manifest_url(manifest: Location, path: str) -> str:
    """A manifest entry as the file URL the listing spells: URLs as they are, absolute
    paths on the manifest's store, relative ones below the manifest's folder."""
    if "://" in path:
        return to_url(path)
    if path.startswith("/"):
        return manifest.url_of(posixpath.normpath(path))
    return manifest.url_of(posixpath.normpath(posixpath.join(
        posixpath.dirname(manifest.path), path)))


def read_labels_manifest(manifest: Location, path_column: str = "path",
                         label_column: str = "label") -> dict[str, str | None]:
    """File URL -> label of a CSV (`,`), TSV (`.tsv`) or JSONL (`.jsonl`, `.ndjson`,
    `.json`) manifest with a header / keys `path_column` and `label_column`. Labels are
    strings (`3` -> '3'); an empty or null label is None. Raises LabelsManifestError."""
    try:
        with manifest.open("rb") as fh:
            text = fh.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsManifestError(f"labels manifest {manifest.url}: {exc}") from exc
    rows: list[tuple[int, Any, Any]] = []
    if manifest.name.lower().endswith((".jsonl", ".ndjson", ".json")):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LabelsManifestError(f"labels manifest {manifest.url} line {n}: not "
                                          f"a JSON object ({exc})") from exc
            if not isinstance(obj, Mapping) or path_column not in obj:
                raise LabelsManifestError(f"labels manifest {manifest.url} line {n}: no "
                                          f"{path_column!r} key")
            rows.append((n, obj[path_column], obj.get(label_column)))
    else:
        delimiter = "\t" if manifest.name.lower().endswith(".tsv") else ","
        reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
        missing = [c for c in (path_column, label_column) if c not in (reader.fieldnames or ())]
        if missing:
            raise LabelsManifestError(f"labels manifest {manifest.url}: the header "
                                      f"{reader.fieldnames} has no column {missing}")
        rows = [(n, r[path_column], r[label_column]) for n, r in enumerate(reader, 2)]
    out: dict[str, str | None] = {}
    line_of: dict[str, int] = {}
    for n, path, label in rows:
        if path is None or not str(path).strip():
            raise LabelsManifestError(f"labels manifest {manifest.url} line {n}: empty path")
        url = _manifest_url(manifest, str(path).strip())
        value = None if label is None or not str(label).strip() else str(label).strip()
        if url in out and out[url] != value:
            raise LabelsManifestError(
                f"labels manifest {manifest.url}: {path!r} has label {out[url]!r} on line "
                f"{line_of[url]} and {value!r} on line {n}")
        out[url] = value
        line_of.setdefault(url, n)
    return out


def manifest_location(cfg: ImageInputConfig, root: Location) -> Location | None:
    """The labels manifest on the store of `root` (its options), or None."""
    if cfg.labels.source != "manifest" or not cfg.labels.path:
        return None
    return root.at(to_url(cfg.labels.path))


def _label(key: Column) -> Column:
    """ImageFolder's class: the first folder below the input root (`<i>/<class>/...`);
    null for a file directly in the root, which ImageFolder would not load at all."""
    parts = F.split(key, "/")
    return F.when(F.size(parts) >= 3, F.element_at(parts, 2))


def _extension(path: Column) -> Column:
    return F.lower(F.regexp_extract(path, r"(\.[^./]+)$", 1))


def claim_images(cfg: ImageInputConfig, files: Sequence[Location]) -> list[Location]:
    """Of `files` (names that are no `IMAGE_EXTENSIONS`), those read as images anyway:
    an extension Pillow reads for a format in `cfg.formats`, or an image signature in
    the first `SNIFF_BYTES` (`sniff_format`; read on the driver, a few bytes per file)."""
    registry = image_extensions()
    claimed = []
    for loc in files:
        if registry.get(_ext_of(loc.name)) in cfg.formats or sniff_format(_read_head(loc)):
            claimed.append(loc)
    return claimed


def ingest_images(spark: SparkSession, cfg: ImageInputConfig,
                  inputs: Sequence[Location], manifest: Location | None = None
                  ) -> IngestResult:
    """Read the image files under `inputs` (recursively; judged by content, see the module
    docstring) into curated image rows (`CURATED_COLUMNS`) and quarantine rows.

    `image_id` is the first 16 hex digits of SHA-256 over `<i>/<path relative to input i>`;
    `content_hash` is the hex SHA-256 of the file's bytes; `label` comes from
    `cfg.labels` (the class folder by default; `manifest`: the labels manifest, default
    `manifest_location`). `n_input` is the number of files read, so every one must come
    out once (the stage adds the files it rejects); `source` is the file URL
    (`file:///x/cat/1.png`)."""
    from pipeline.ingest.listing import scan_inputs

    labels = cfg.labels
    if labels.source == "manifest" and manifest is None:
        manifest = manifest_location(cfg, inputs[0] if inputs else Location("file:///"))
    if labels.source == "manifest" and manifest is None:
        raise LabelsManifestError("inputs.images.labels.source is manifest but "
                                  "inputs.images.labels.path is not set")
    by_url = (read_labels_manifest(manifest, labels.path_column, labels.label_column)
              if manifest is not None and labels.source == "manifest" else None)
    scan = scan_inputs(inputs, IMAGE_EXTENSIONS, cfg.include, cfg.exclude)
    files = sorted(scan.files + claim_images(cfg, scan.unsupported), key=lambda f: f.url)
    named_exts = image_extensions()

    uri = F.col("path")  # the file URL, as list_input_files spells it
    key = relative_key(uri, input_roots(inputs))
    listed = read_files(spark, files, max_bytes=cfg.max_bytes).select(
        "path", "content", "length", uri.alias("source"), key.alias("key"),
        _extension(uri).isin(*IMAGE_EXTENSIONS).alias("named"))

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
    reason, detail = p.getField("reason"), p.getField("detail")
    if by_url is not None:
        assert manifest is not None
        table = spark.createDataFrame(sorted(by_url.items()),
                                      "source string, manifest_label string")
        probed = probed.join(F.broadcast(table), "source", "left")
        label = F.col("manifest_label")
        unlabeled = reason.isNull() & label.isNull()
        reason = F.when(unlabeled, F.lit("UNLABELED_IMAGE")).otherwise(reason)
        detail = F.when(unlabeled, F.lit(f"no label for this image in the labels manifest "
                                         f"{manifest.url}")).otherwise(detail)
    elif labels.source == "none":
        label = F.lit(None).cast("string")
    else:
        label = _label(F.col("key"))
    probed = probed.select("source", "content", "key", "named", p.alias("p"),
                           reason.alias("reason"), detail.alias("detail"), label.alias("label"))
    curated = probed.filter(F.col("reason").isNull()).select(
        stable_id(F.col("key")).alias("image_id"), "source",
        F.col("content").alias("bytes"),
        *[p.getField(name).alias(name)
          for name in ("format", "width", "height", "channels")],
        F.sha2(F.col("content"), 256).alias("content_hash"),
        p.getField("pixel_hash").alias("pixel_hash"),
        F.col("label"),
    )
    bad = quarantine_rows(
        probed.filter(F.col("reason").isNotNull()), stage="ingest",
        source=F.col("source"), reason=F.col("reason"), detail=F.col("detail"),
        raw=p.getField("head"))
    quarantine = too_large.unionByName(bad)

    def figures() -> dict[str, Any]:
        """Detected formats of the curated images, how many of them carry an extension
        of another format, how many were read by content only; the labels' source."""
        lie = ~F.coalesce(F.create_map(*[F.lit(x) for kv in named_exts.items() for x in kv])
                          [_extension(F.col("source"))] == p.getField("format"), F.lit(False))
        rows = (probed.filter(F.col("reason").isNull())
                .groupBy(p.getField("format").alias("format"), lie.alias("lie"),
                         F.col("named")).count().collect())
        formats: dict[str, int] = {}
        for r in rows:
            formats[r["format"]] = formats.get(r["format"], 0) + r["count"]
        out: dict[str, Any] = {
            "formats": dict(sorted(formats.items())),
            "extension_mismatch": sum(r["count"] for r in rows if r["lie"]),
            "read_by_content": sum(r["count"] for r in rows if not r["named"]),
            "labels": {"source": labels.source}}
        if by_url is not None and manifest is not None:
            read = {f.url for f in files}
            out["labels"].update({
                "manifest": manifest.url, "manifest_entries": len(by_url),
                "manifest_entries_without_image": sum(u not in read for u in by_url)})
        return out

    return IngestResult(curated=curated, quarantine=quarantine, shared=probed,
                        n_input=len(files), figures=figures)


def _ext_of(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""
