"""The images modality: class folders of image files -> a small CNN classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.gates import GateSpec
from pipeline.ingest.reasons import IMAGE_REASONS
from pipeline.modalities.spec import (
    DedupOutput,
    DedupReportSpec,
    EvaluationSpec,
    IngestRequest,
    ModalitySpec,
    QualitySpec,
    TrainingSpec,
    metric_text,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from pipeline.config import ImageInputConfig, ImageTaskConfig, PipelineConfig
    from pipeline.evaluate.model import TrainedModel
    from pipeline.html import Html
    from pipeline.storage import Location
    from pipeline.train.task import Task

#: file extensions each detected image format may legitimately carry
EXTENSIONS: Mapping[str, tuple[str, ...]] = {
    "JPEG": ("jpg", "jpeg", "jpe", "jfif"), "PNG": ("png",), "GIF": ("gif",),
    "BMP": ("bmp", "dib"), "WEBP": ("webp",), "TIFF": ("tif", "tiff"),
    "PPM": ("ppm", "pgm", "pbm", "pnm"), "ICO": ("ico",)}


def _inputs(cfg: PipelineConfig) -> ImageInputConfig:
    return cfg.inputs.images


def _ingest(req: IngestRequest) -> Any:
    from pipeline.ingest.images import ingest_images

    return ingest_images(req.spark, req.cfg.inputs.images, req.inputs,
                         _manifest(req.cfg))


def _claim(cfg: PipelineConfig, files: Sequence[Location]) -> list[Location]:
    from pipeline.ingest.images import claim_images

    return claim_images(cfg.inputs.images, files)


def _manifest(cfg: PipelineConfig) -> Any:
    """The labels manifest as a Location on the store of `storage.root`, or None."""
    from pipeline.ingest.images import manifest_location

    return manifest_location(cfg.inputs.images, cfg.storage.location)


def _key_parts(cfg: PipelineConfig) -> Mapping[str, Any]:
    """The labels manifest's content digest: editing it re-runs ingest. A manifest that
    does not exist is a configuration error, raised while planning (before Spark)."""
    import hashlib

    from pipeline.config import ConfigError

    manifest = _manifest(cfg)
    if manifest is None:
        return {}
    try:
        with manifest.open("rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ConfigError([f"inputs.images.labels.path: {cfg.inputs.images.labels.path!r}: "
                           f"no such file ({type(exc).__name__})"]) from exc
    return {"labels_manifest": digest}


def _dedup(spark: SparkSession, curated: DataFrame, cfg: PipelineConfig) -> DedupOutput:
    from pipeline.dedup.images import image_dedup

    result = image_dedup(spark, curated, cfg.dedup,
                         dhash_max_hamming=cfg.dedup.dhash_max_hamming)
    return DedupOutput(result.kept, result.duplicates, None, result.release)


def _with_n_bytes(df: DataFrame) -> DataFrame:
    from pyspark.sql import functions as F

    if "bytes" in df.columns and "n_bytes" not in df.columns:
        return df.withColumn("n_bytes", F.length("bytes"))
    return df


def _consistency(df: DataFrame, n: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from pipeline.quality import group_counts

    if not {"format", "source"} <= set(df.columns):
        return {}
    ext = F.lower(F.regexp_extract("source", r"\.([A-Za-z0-9]+)(?::\d+)?$", 1))
    ok = F.lit(False)
    for fmt, exts in EXTENSIONS.items():
        ok = ok | ((F.col("format") == fmt) & ext.isin(*exts))
    first = df.agg(F.sum(F.when(~ok, 1)).alias("lie"),
                   F.sum(F.when((F.col("width") <= 0) | (F.col("height") <= 0), 1)
                         ).alias("bad")).first()
    assert first is not None
    return {"extension_mismatch": int(first["lie"] or 0) / n if n else 0.0,
            "non_positive_size": int(first["bad"] or 0) / n if n else 0.0,
            "formats": group_counts(df, "format"), "channels": group_counts(df, "channels")}


def _synth(out_dir: Any, scale: float, seed: int) -> Any:
    from pipeline.synth.images import generate_images

    return generate_images(out_dir, scale, seed)


def _problems(cfg: PipelineConfig) -> list[str]:
    i = cfg.inputs.images
    out = [f"inputs.images.{k}: must be > 0, got {getattr(i, k)}"
           for k in ("max_pixels", "max_bytes") if getattr(i, k) <= 0]
    if i.labels.source == "manifest" and not i.labels.path:
        out.append("inputs.images.labels.path: required with source: manifest (a CSV, TSV "
                   "or JSONL file of path,label)")
    if i.labels.source != "manifest" and i.labels.path:
        out.append(f"inputs.images.labels.path: only read with source: manifest, but source "
                   f"is {i.labels.source}")
    return out


def _unavailable(cfg: PipelineConfig) -> str | None:
    if cfg.inputs.images.labels.source == "none":
        return ("no labels: inputs.images.labels.source is none, so the image classifier "
                "has nothing to learn (the images are still ingested and deduplicated)")
    return None


def _task_config(cfg: PipelineConfig) -> ImageTaskConfig:
    return cfg.train.images


def _make_task(cfg: PipelineConfig, labels: Sequence[str] | None) -> Task:
    from pipeline.train.tasks.images import ImageClassifierTask

    return ImageClassifierTask.from_config(cfg, labels)


def _score(trained: TrainedModel, table: pa.Table, chunk: int) -> dict[str, Any]:
    from pipeline.evaluate.inference import image_scores

    return image_scores(trained, table, chunk)


def _figures(predictions: Mapping[str, pa.Table], labels: Sequence[str], points: int
             ) -> tuple[dict[str, float], dict[str, Any]]:
    from pipeline.evaluate.figures import image_figures

    return image_figures(predictions["test"], labels)


def _summary(m: Mapping[str, float | None]) -> str:
    return f"test accuracy {metric_text(m, 'accuracy')}, macro-F1 {metric_text(m, 'macro_f1')}"


def _section(report: Mapping[str, Any]) -> list[Html]:
    from pipeline.evaluate.report import image_section

    return image_section(report)


def _inspect(paths: Sequence[str]) -> str:
    from pipeline.inspect import images_yaml

    return images_yaml(paths)


SPEC = ModalitySpec(
    inspect=_inspect,
    name="images",
    record="image",
    input_config=_inputs,
    ingest=_ingest,
    id_column="image_id",
    curated_keys=("image_id",),
    reasons=IMAGE_REASONS,
    dedup=_dedup,
    input_extensions=tuple(f".{e}" for exts in EXTENSIONS.values() for e in exts),
    # Other names are read when their content is an image (a JPEG named .svg).
    claim_files=_claim,
    ingest_key_parts=_key_parts,
    dedup_report=DedupReportSpec(id_column="image_id", content_column="bytes"),
    quality=QualitySpec(range_columns=("width", "height", "n_bytes"),
                        consistency=_consistency, prepare=_with_n_bytes),
    synth=_synth,
    config_problems=_problems,
    training=TrainingSpec(
        config=_task_config,
        make_task=_make_task,
        vocabulary_column="label",
        unavailable=_unavailable,
        # Images are decoded at most max_pixels large: a change changes the model input.
        extra_config=lambda cfg: {"max_pixels": cfg.inputs.images.max_pixels},
        evaluation=EvaluationSpec(
            feature_columns=("bytes",),
            score=_score,
            figures=_figures,
            summary=_summary,
            report_section=("per-class figures", _section),
            headline=("accuracy", "macro_f1", "loss", "rows", "unknown_label_rows"),
            label_column="label",
            prediction_schema="image_id: string, label: string (nullable), pred_label: "
                              "string, confidence: float64, nll: float64 (nullable), "
                              "prob_<class>: float64 per class",
        ),
    ),
    metric_gates=(
        GateSpec("min_image_accuracy", ("metrics", "accuracy"), "accuracy", ">="),
        GateSpec("min_image_macro_f1", ("metrics", "macro_f1"), "macro-F1", ">="),
    ),
)
