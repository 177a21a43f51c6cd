"""What a modality is to the pipeline: one `ModalitySpec` per kind of data.

The torchtitan `ModelSpec` idea applied to data. A spec names everything that differs
between text, images and transactions (its input config, Spark ingest and dedup
functions, ids, reason codes, quality figures, training task, inference, metrics, report
section, gates, summary line); the stages are generic and look the spec up by name
(`pipeline.modalities.get`). Adding a modality is one new spec module plus its
`register` call; no stage branches on a modality's name.

The callables are small functions that import their implementation when called, so that
reading a spec (the orchestrator planning, `pipeline status`) never imports pyspark,
Ray or torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.gates import GateSpec

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

    from pipeline.config import PipelineConfig
    from pipeline.evaluate.model import TrainedModel
    from pipeline.html import Html
    from pipeline.storage import Location
    from pipeline.train.task import Task


def metric_text(metrics: Mapping[str, float | None], key: str) -> str:
    """A metric for a summary line: 4 decimals, or "undefined" (None: e.g. no positives)."""
    value = metrics.get(key)
    return "undefined" if value is None else f"{value:.4f}"


class InputConfig(Protocol):
    """What every modality's input section has: where its raw files are."""

    @property
    def paths(self) -> tuple[str, ...]: ...


class TaskConfig(Protocol):
    """What every modality's training section has (`train.<modality>`)."""

    @property
    def enabled(self) -> bool: ...

    @property
    def batch_size(self) -> int: ...

    @property
    def lr(self) -> float: ...


@dataclass(frozen=True)
class IngestRequest:
    """What a modality's ingest function gets: Spark, its input config and raw files."""

    spark: SparkSession
    cfg: PipelineConfig
    inputs: Sequence[Location]  # configured paths, or the synth stage's folder

    @property
    def local_mode(self) -> bool:
        return str(self.spark.sparkContext.master or "").startswith("local")


@dataclass
class DedupOutput:
    """What a modality's dedup function returns (Spark frames, not yet written)."""

    kept: DataFrame
    duplicates: DataFrame
    quarantine: DataFrame | None = None  # None: nothing quarantined by dedup
    release: Callable[[], None] = lambda: None  # unpersist what the dedup cached


@dataclass(frozen=True)
class QualitySpec:
    """Modality-specific data-quality figures (pipeline.quality adds the generic ones)."""

    #: numeric columns whose min/max/quantiles are reported
    range_columns: tuple[str, ...] = ()
    #: extra consistency figures of the kept rows: (kept frame, row count) -> figures
    consistency: Callable[[DataFrame, int], dict[str, Any]] | None = None
    #: label balance of the kept rows: (kept frame, row count) -> figures; None: counts of
    #: the `label` column when there is one
    label_balance: Callable[[DataFrame, int], dict[str, Any]] | None = None
    #: derived columns to add before the range figures (e.g. images' n_bytes)
    prepare: Callable[[DataFrame], DataFrame] | None = None


@dataclass(frozen=True)
class DedupReportSpec:
    """How the dedup report shows a modality's matched pairs."""

    id_column: str  # the curated column that identifies a record to a reader
    content_column: str  # shown side by side for a pair
    pair_rules: tuple[str, ...] | None = ("near_dup",)  # None: every rule


@dataclass(frozen=True)
class EvaluationSpec:
    """How a modality's trained model is scored, measured and reported."""

    #: input columns (besides the id) a table needs to be scored
    feature_columns: tuple[str, ...]
    #: per-row scores of one Arrow batch: (model, batch, rows per forward) -> columns
    score: Callable[[TrainedModel, pa.Table, int], dict[str, Any]]
    #: (sorted prediction tables by split, class labels, curve points) -> (metrics, details)
    figures: Callable[[Mapping[str, pa.Table], Sequence[str], int],
                      tuple[dict[str, float], dict[str, Any]]]
    #: one line of the headline metrics (undefined ones read "undefined")
    summary: Callable[[Mapping[str, float | None]], str]
    #: the report's own section: (title, report dict -> page fragments)
    report_section: tuple[str, Callable[[Mapping[str, Any]], list[Html]]] | None = None
    #: metrics shown first in the report, in this order
    headline: tuple[str, ...] = ()
    #: ground-truth column, used when present (evaluation needs it, batch inference not)
    label_column: str | None = None
    #: splits scored; "test" always, "val" where a decision threshold is chosen on it
    splits: tuple[str, ...] = ("test",)
    #: extra report content, e.g. generated samples: (cfg, model, data stage, test) -> rows
    samples: Callable[[PipelineConfig, TrainedModel, Location, pa.Table],
                      list[dict[str, str]]] | None = None
    #: the prediction columns, in words (batch inference's --help and docs)
    prediction_schema: str = ""
    #: further input columns that depend on the configuration (declared features)
    config_columns: Callable[[PipelineConfig], tuple[str, ...]] = lambda cfg: ()


@dataclass(frozen=True)
class TrainingSpec:
    """The training task of a modality (pipeline.train)."""

    #: its section of the configuration (`train.<modality>`)
    config: Callable[[PipelineConfig], TaskConfig]
    #: (config, class vocabulary or None) -> Task
    make_task: Callable[[PipelineConfig, Sequence[str] | None], Task]
    #: column whose sorted distinct train-split values are the class vocabulary
    vocabulary_column: str | None = None
    #: config outside `train` that changes the trained model (e.g. image max_pixels)
    extra_config: Callable[[PipelineConfig], Mapping[str, Any]] = lambda cfg: {}
    evaluation: EvaluationSpec | None = None
    #: why the configured data cannot train this task (e.g. a table without a label
    #: column), shown by `pipeline plan`; None when it can
    unavailable: Callable[[PipelineConfig], str | None] = lambda cfg: None


@dataclass(frozen=True)
class ModalitySpec:
    """Everything the generic stages need to know about one modality."""

    name: str
    #: what one record is, for help texts and logs ("document", "image", "transaction")
    record: str
    #: its input section of the configuration (`inputs.<modality>`)
    input_config: Callable[[PipelineConfig], InputConfig]
    #: Spark: raw files -> IngestResult (curated, quarantine, independent input count)
    ingest: Callable[[IngestRequest], Any]
    #: the curated id column, and the sort/partition keys of the curated files
    id_column: str
    curated_keys: tuple[str, ...]
    #: the closed list of quarantine reason codes: code -> meaning
    reasons: Mapping[str, str]
    #: Spark: (session, curated rows, config) -> DedupOutput
    dedup: Callable[[SparkSession, DataFrame, PipelineConfig], DedupOutput]
    dedup_report: DedupReportSpec
    #: file name endings its ingest reads (case-insensitive); any other file found under a
    #: configured path is quarantined as UNSUPPORTED_FILE (pipeline.ingest.listing).
    #: Empty: every file is a record. `compressed_extensions`: those also read as
    #: .gz/.bz2/.zst
    input_extensions: tuple[str, ...] = ()
    compressed_extensions: tuple[str, ...] = ()
    #: of the files found whose names are no `input_extensions`, those the modality reads
    #: anyway, judged by content (images: a JPEG named .svg); (config, files) -> files
    claim_files: Callable[[PipelineConfig, Sequence[Location]], list[Location]] | None = None
    #: `pipeline inspect` for files of this modality: paths -> a YAML `inputs` block with
    #: what was detected as comments (pipeline.inspect)
    inspect: Callable[[Sequence[str]], str] | None = None
    quality: QualitySpec = field(default_factory=QualitySpec)
    #: config outside `inputs.<modality>` that changes the ingest output, for the cache
    #: key (e.g. a non-secret id of the HMAC key)
    ingest_key_parts: Callable[[PipelineConfig], Mapping[str, Any]] = lambda cfg: {}
    #: sample data: (local folder, scale, seed) -> pipeline.synth ModalityResult; None: the
    #: modality needs configured inputs
    synth: Callable[[Any, float, int], Any] | None = None
    #: range and cross-field checks of its config sections, each naming its key
    config_problems: Callable[[PipelineConfig], list[str]] = lambda cfg: []
    training: TrainingSpec | None = None
    #: gates on evaluation metrics (the data gates of pipeline.gates apply to all)
    metric_gates: tuple[GateSpec, ...] = ()

    def disabled_reason(self, cfg: PipelineConfig) -> str:
        """Why `trains(cfg)` is False, for the plan."""
        why = self.training.unavailable(cfg) if self.training is not None else None
        if self.name in cfg.modalities and why:
            return why
        return "disabled by config"

    @property
    def evaluation(self) -> EvaluationSpec | None:
        return self.training.evaluation if self.training is not None else None

    def trains(self, cfg: PipelineConfig) -> bool:
        """Whether this run trains the modality (selected and its task enabled)."""
        return (self.name in cfg.modalities and self.training is not None
                and self.training.unavailable(cfg) is None
                and self.training.config(cfg).enabled)
