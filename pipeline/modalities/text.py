"""The text modality: JSONL / .txt documents -> a byte-level decoder-only language model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.gates import GateSpec
from pipeline.ingest.reasons import TEXT_REASONS
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

    from pipeline.config import PipelineConfig, TextInputConfig, TextTaskConfig
    from pipeline.evaluate.model import TrainedModel
    from pipeline.html import Html
    from pipeline.storage import Location
    from pipeline.train.task import Task


def _inputs(cfg: PipelineConfig) -> TextInputConfig:
    return cfg.inputs.text


def _ingest(req: IngestRequest) -> Any:
    from pipeline.ingest.text import ingest_text

    return ingest_text(req.spark, req.cfg.inputs.text, req.inputs)


def _dedup(spark: SparkSession, curated: DataFrame, cfg: PipelineConfig) -> DedupOutput:
    from pipeline.dedup.lsh import text_dedup

    return text_dedup(spark, curated, cfg.dedup)


def _consistency(df: DataFrame, n: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    if not {"text", "n_chars"} <= set(df.columns) or not n:
        return {}
    r = df.agg(F.sum(F.when(F.char_length("text") != F.col("n_chars"), 1)).alias("bad")).first()
    return {"n_chars_mismatch": int((r["bad"] if r is not None else 0) or 0) / n}


def _synth(out_dir: Any, scale: float, seed: int) -> Any:
    from pipeline.synth.text import generate_text

    return generate_text(out_dir, scale, seed)


def _problems(cfg: PipelineConfig) -> list[str]:
    p = []
    t = cfg.inputs.text
    if t.max_chars <= 0:
        p.append(f"inputs.text.max_chars: must be > 0, got {t.max_chars}")
    if t.min_chars < 0 or t.min_chars > t.max_chars:
        p.append(f"inputs.text.min_chars: must be in [0, max_chars={t.max_chars}], "
                 f"got {t.min_chars}")
    if t.encoding.strip().lower() != "auto":
        import codecs

        try:
            codecs.lookup(t.encoding)
        except LookupError:
            p.append(f"inputs.text.encoding: {t.encoding!r} is no Python codec (e.g. utf-8, "
                     "cp1252, latin-1, utf-16) and not 'auto'")
    tr = cfg.train.text
    if tr.n_heads <= 0 or tr.d_model % tr.n_heads != 0:
        p.append(f"train.text.d_model: {tr.d_model} is not divisible by "
                 f"train.text.n_heads={tr.n_heads}")
    return p


def _task_config(cfg: PipelineConfig) -> TextTaskConfig:
    return cfg.train.text


def _make_task(cfg: PipelineConfig, labels: Sequence[str] | None) -> Task:
    from pipeline.train.tasks.text import TextLMTask

    return TextLMTask.from_config(cfg, labels)


def _score(trained: TrainedModel, table: pa.Table, chunk: int) -> dict[str, Any]:
    from pipeline.evaluate.inference import text_scores

    return text_scores(trained, table, chunk)


def _figures(predictions: Mapping[str, pa.Table], labels: Sequence[str], points: int
             ) -> tuple[dict[str, float], dict[str, Any]]:
    from pipeline.evaluate.figures import text_figures

    return text_figures(predictions["test"])


def _summary(m: Mapping[str, float | None]) -> str:
    return (f"test perplexity {metric_text(m, 'perplexity')}, "
            f"{metric_text(m, 'bits_per_byte')} bits/byte")


def _section(report: Mapping[str, Any]) -> list[Html]:
    from pipeline.evaluate.report import text_section

    return text_section(report)


def _samples(cfg: PipelineConfig, trained: TrainedModel, data: Location,
             test: pa.Table) -> list[dict[str, str]]:
    from pipeline.evaluate.samples import text_samples

    return text_samples(cfg, trained, data, test)


def _inspect(paths: Sequence[str]) -> str:
    from pipeline.inspect import text_yaml

    return text_yaml(paths)


SPEC = ModalitySpec(
    inspect=_inspect,
    name="text",
    record="document",
    input_config=_inputs,
    ingest=_ingest,
    input_extensions=(".jsonl", ".ndjson", ".json", ".txt", ".csv", ".tsv", ".parquet"),
    id_column="doc_id",
    curated_keys=("doc_id",),
    reasons=TEXT_REASONS,
    dedup=_dedup,
    compressed_extensions=(".jsonl", ".ndjson", ".json", ".txt", ".csv", ".tsv"),
    dedup_report=DedupReportSpec(id_column="doc_id", content_column="text"),
    quality=QualitySpec(range_columns=("n_chars",), consistency=_consistency),
    synth=_synth,
    config_problems=_problems,
    training=TrainingSpec(
        config=_task_config,
        make_task=_make_task,
        evaluation=EvaluationSpec(
            feature_columns=("text",),
            score=_score,
            figures=_figures,
            summary=_summary,
            report_section=("generated samples", _section),
            headline=("perplexity", "bits_per_byte", "loss", "documents", "bytes"),
            samples=_samples,
            prediction_schema="doc_id: string, n_bytes: int64, nll_bits: float64, "
                              "eos_nll_bits: float64",
        ),
    ),
    metric_gates=(
        GateSpec("max_text_bits_per_byte", ("metrics", "bits_per_byte"), "bits per byte", "<="),
        GateSpec("max_text_perplexity", ("metrics", "perplexity"), "perplexity", "<="),
    ),
)
