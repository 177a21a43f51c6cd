"""Typed, frozen configuration for every stage, loaded from YAML with `--set` overrides.

The tree is plain frozen dataclasses (torchtitan style). `load_config` builds it from YAML
plus dotted overrides and validates everything in one pass: every unknown key, wrong type
and out-of-range value is collected and reported together in one `ConfigError`, before any
Spark or Ray work starts. Secrets never live in the config itself: fields name the
environment variable that holds them (`*_env`), and `to_dict(redact=True)` also masks any
field marked secret, any field or mapping key that names a credential and any value that
carries one (`pipeline/redact.py`: S3, GCS and Azure spellings, fsspec and Spark's).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.config_checks import check_values
from pipeline.config_convert import apply_overrides, build_dataclass, deep_copy
from pipeline.config_transactions import DEFAULT_SCHEMA, TransactionSchemaConfig
from pipeline.redact import secret_key, secret_value
from pipeline.storage import Location, to_url

REDACTED = "***"


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line, each naming its dotted key."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the configuration:\n{lines}")


@dataclass(frozen=True)
class StorageConfig:
    """Where runs live: any fsspec URL (file://, memory://, s3://, gs://)."""

    root: str = "file://./data"
    # Extra fsspec storage options (endpoint_url, region...). Credentials belong in the
    # environment (AWS_ACCESS_KEY_ID...), and are redacted here if someone puts them in.
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def location(self) -> Location:
        """The root as a storage handle: the URL together with its options."""
        return Location(self.root, self.options)


@dataclass(frozen=True)
class SynthConfig:
    """Sample raw data generated when no input paths are configured."""

    scale: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class TextInputConfig:
    # Files, folders (searched recursively) and glob patterns; `include`/`exclude` are
    # glob patterns matched against each found file's path below its configured path
    # (docs/inputs.md).
    paths: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # Any Python codec name, or "auto" (detected per file with charset-normalizer).
    encoding: str = "utf-8"
    text_field: str = "text"
    id_field: str = "id"
    label_field: str = "label"
    min_chars: int = 1
    max_chars: int = 100_000


@dataclass(frozen=True)
class ImageLabelsConfig:
    """Where image labels come from (docs/inputs.md): `folder`, the class folder below the
    input path (ImageFolder's layout); `manifest`, a CSV/TSV/JSONL file of path,label at
    `path` (its paths relative to its own folder, or absolute); `none`, no labels (ingest
    and dedup run, the image classifier is disabled)."""

    source: Literal["folder", "manifest", "none"] = "folder"
    path: str | None = None
    path_column: str = "path"
    label_column: str = "label"


@dataclass(frozen=True)
class ImageInputConfig:
    paths: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # Pillow's decompression-bomb limit: headers claiming more pixels are quarantined
    # before any pixel is decoded.
    max_pixels: int = 16_000_000
    max_bytes: int = 20_000_000
    # Pillow format names accepted; the format is detected from the bytes (PPM covers
    # .ppm/.pgm/.pbm/.pnm). A decodable image of another format is UNSUPPORTED_FORMAT.
    formats: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
    labels: ImageLabelsConfig = field(default_factory=ImageLabelsConfig)


@dataclass(frozen=True)
class TransactionInputConfig:
    paths: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    # Name of the environment variable that holds the HMAC key for card/account tokens.
    hmac_key_env: str = "PIPELINE_HMAC_KEY"
    max_amount: float = 10_000_000.0
    # Amounts must be > 0 (None), or >= min_amount (0 for tables with zero amounts, a
    # negative bound for statements that book debits as negative amounts).
    min_amount: float | None = None
    # The table's format and a column per role (pipeline.config_transactions, docs/
    # inputs.md); None: the sample data's 10-column format.
    schema: TransactionSchemaConfig | None = None

    @property
    def table_schema(self) -> TransactionSchemaConfig:
        """The declared schema, or the default 10-column one."""
        return self.schema if self.schema is not None else DEFAULT_SCHEMA


@dataclass(frozen=True)
class InputsConfig:
    text: TextInputConfig = field(default_factory=TextInputConfig)
    images: ImageInputConfig = field(default_factory=ImageInputConfig)
    transactions: TransactionInputConfig = field(default_factory=TransactionInputConfig)



@dataclass(frozen=True)
class SparkConfig:
    master: str = "local[2]"
    app_name: str = "pipeline"
    shuffle_partitions: int = 4
    driver_memory: str = "2g"
    ui_enabled: bool = False
    conf: Mapping[str, str] = field(default_factory=dict)
    # Where the Spark stages (ingest, dedup) run: "local" in this process, or
    # "spark-submit" of jobs/stage.py with the package shipped by --py-files.
    backend: Literal["local", "spark-submit"] = "local"
    # spark-submit's --master: spark://host:7077, yarn, k8s://https://..., local[2]
    submit_master: str = "local[2]"
    # Extra spark-submit arguments, e.g. ["--deploy-mode", "client", "--executor-memory", "2g"]
    submit_args: tuple[str, ...] = ()
    # The spark-submit program. None: $SPARK_HOME/bin/spark-submit, else the one installed
    # next to this Python (pyspark's), else the one on PATH.
    submit_command: str | None = None
    # Python of the executors (PYSPARK_PYTHON). None: this very interpreter, which is right
    # when the workers run on this machine; on YARN/Kubernetes e.g. ./env/bin/python from
    # an --archives venv, or the image's python.
    submit_python: str | None = None
    # Seconds a spark-submit job may run before it is killed (None: no limit).
    submit_timeout_s: float | None = None

    def problems(self) -> list[str]:
        """Problems of the spark-submit settings, each naming its key."""
        out = []
        if self.submit_timeout_s is not None and self.submit_timeout_s <= 0:
            out.append(f"spark.submit_timeout_s: must be > 0 or null, got "
                       f"{self.submit_timeout_s}")
        for arg in ("--master", "--py-files"):
            if arg in self.submit_args:
                out.append(f"spark.submit_args: {arg} is set by the backend (use "
                           f"spark.submit_master / the shipped package), not here")
        return out


@dataclass(frozen=True)
class RayConfig:
    # None: start an in-process local Ray. Otherwise a cluster address (ray://, http://).
    address: str | None = None
    num_cpus: int | None = None
    # Environment variable holding the cluster's auth token (Ray token authentication).
    auth_token_env: str = "RAY_AUTH_TOKEN"
    # Where the Ray stages (train, evaluate) run: "local" in this process, or "job": the
    # Ray Jobs API at `job_address` (the dashboard, e.g. http://127.0.0.2:8265).
    backend: Literal["local", "job"] = "local"
    job_address: str | None = None
    # The interpreter that runs a job's entry point on the cluster's head node.
    job_python: str = "python"
    # Names of extra (non-secret) environment variables copied into a job's runtime_env,
    # on top of the built-in whitelist (PYTHONHASHSEED, PIPELINE_LOG_LEVEL, ...).
    job_env_vars: tuple[str, ...] = ()
    # Seconds a Ray job may run before it is stopped (None: no limit).
    job_timeout_s: float | None = None

    def problems(self) -> list[str]:
        """Problems of the Ray job settings, each naming its key."""
        out = []
        if self.job_timeout_s is not None and self.job_timeout_s <= 0:
            out.append(f"ray.job_timeout_s: must be > 0 or null, got {self.job_timeout_s}")
        if not self.job_python.strip():
            out.append("ray.job_python: must name an interpreter, got an empty string")
        for name in self.job_env_vars:
            if name == self.auth_token_env or _looks_secret(name) or name.endswith("_KEY"):
                out.append(f"ray.job_env_vars: {name} looks like a secret; secrets never go "
                           "into a job's runtime_env (the cluster's environment holds them)")
        return out


@dataclass(frozen=True)
class ScalingConfig:
    num_workers: int = 1
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    cpus_per_worker: int = 1
    # Ray placement group strategy of the training workers. PACK fills one node first;
    # STRICT_SPREAD puts every worker on its own node (so one lost node costs one worker,
    # and training waits for a replacement node rather than doubling up).
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


@dataclass(frozen=True)
class DedupConfig:
    shingle_n: int = 5
    num_perm: int = 128
    bands: int = 16
    rows: int = 8
    jaccard_threshold: float = 0.8
    verify: bool = True
    phash_max_hamming: int = 6
    # A pHash match must also be this close in dHash (None: pHash alone). On the sample
    # images this removed 102 of 115 false pHash matches and kept every true pair.
    dhash_max_hamming: int | None = 10
    retry_window_s: int = 120
    retry_policy: Literal["flag", "drop"] = "flag"
    seed: int = 1


@dataclass(frozen=True)
class SplitConfig:
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0


@dataclass(frozen=True)
class TextTaskConfig:
    enabled: bool = True
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    batch_size: int = 16
    lr: float = 3e-3


@dataclass(frozen=True)
class ImageTaskConfig:
    enabled: bool = True
    image_size: int = 32
    channels: int = 32
    batch_size: int = 32
    lr: float = 2e-3


@dataclass(frozen=True)
class TransactionTaskConfig:
    enabled: bool = True
    hidden: int = 64
    batch_size: int = 256
    lr: float = 2e-3


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 2
    seed: int = 0
    weight_decay: float = 0.01
    warmup_steps: int = 10
    grad_accum_steps: int = 1
    grad_clip: float = 1.0
    checkpoint_every_steps: int = 50
    keep_best: int = 2
    max_failures: int = 2
    log_every_steps: int = 10
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    text: TextTaskConfig = field(default_factory=TextTaskConfig)
    images: ImageTaskConfig = field(default_factory=ImageTaskConfig)
    transactions: TransactionTaskConfig = field(default_factory=TransactionTaskConfig)


@dataclass(frozen=True)
class GatesConfig:
    """Thresholds that stop the pipeline with a message naming the figure."""

    max_quarantine_rate: float = 0.2
    max_duplicate_rate: float = 0.5
    max_text_bits_per_byte: float = 16.0
    # Optional evaluation gates (None: not checked). A configured gate whose figure is
    # undefined (PR-AUC of a test split without positives) fails, so the minimums are off
    # by default rather than 0.0: a 0.0 minimum would check nothing but definedness.
    min_image_accuracy: float | None = None
    min_fraud_pr_auc: float | None = None
    max_text_perplexity: float | None = None
    min_fraud_roc_auc: float | None = None
    min_image_macro_f1: float | None = None

    def problems(self) -> list[str]:
        """Range problems of the optional evaluation gates, each naming its key."""
        out = []
        for key in ("min_image_accuracy", "min_fraud_pr_auc", "min_fraud_roc_auc",
                    "min_image_macro_f1"):
            value = getattr(self, key)
            if value is not None and not 0.0 <= value <= 1.0:
                out.append(f"gates.{key}: must be in [0, 1] or null, got {value}")
        if self.max_text_perplexity is not None and self.max_text_perplexity < 1.0:
            out.append(f"gates.max_text_perplexity: must be >= 1 or null, got "
                       f"{self.max_text_perplexity}")
        return out


@dataclass(frozen=True)
class EvaluateConfig:
    """The evaluate stages and batch inference (pipeline.evaluate)."""

    # Rows per inference batch handed to a model actor.
    batch_size: int = 256
    # Model actors in the Ray Data pool (each loads the model once).
    actors: int = 1
    # CPUs (torch threads) per model actor.
    cpus_per_actor: int = 1
    # The evaluate stages score splits of at most this many rows (by the dedup manifest)
    # in their own process, without starting the actor pool; 0 = always the pool.
    # (`pipeline predict` always uses the pool: its tables have no size limit.)
    in_process_max_rows: int = 5000
    # Generated LM samples in the text report: prompts from the test split.
    num_samples: int = 3
    prompt_chars: int = 40
    max_new_tokens: int = 64
    # 0 = greedy decoding.
    temperature: float = 0.8
    # Seed of the sample prompts and of the sampling.
    seed: int = 0
    # Most points per ROC / PR curve kept for the report's plots.
    curve_points: int = 200

    def problems(self) -> list[str]:
        """Range problems of the section, each naming its key."""
        out = [f"evaluate.{key}: must be > 0, got {getattr(self, key)}"
               for key in ("batch_size", "actors", "cpus_per_actor", "prompt_chars",
                           "max_new_tokens") if getattr(self, key) <= 0]
        if self.num_samples < 0:
            out.append(f"evaluate.num_samples: must be >= 0, got {self.num_samples}")
        if self.in_process_max_rows < 0:
            out.append(f"evaluate.in_process_max_rows: must be >= 0, got "
                       f"{self.in_process_max_rows}")
        if self.temperature < 0:
            out.append(f"evaluate.temperature: must be >= 0, got {self.temperature}")
        if self.curve_points < 2:
            out.append(f"evaluate.curve_points: must be >= 2, got {self.curve_points}")
        return out


@dataclass(frozen=True)
class OrchestratorConfig:
    """How `pipeline run` retries failed stages and guards a run id."""

    # Attempts per stage for errors marked retryable (1 = no retry).
    max_attempts: int = 3
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    # A lock whose holder has not refreshed it for this long is considered abandoned.
    lock_stale_s: float = 120.0


@dataclass(frozen=True)
class TrackingConfig:
    """Where runs are reported besides their own reports: MLflow and Prometheus
    (docs/tracking.md). Every target is off while unset; a target that fails only warns."""

    # MLflow tracking URI: a local path (or file:// / sqlite:/// URI) or an http(s):// server.
    # Credentials come from MLflow's own environment (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN).
    mlflow_uri: str | None = None
    mlflow_experiment: str = "pipeline"
    # Seconds one MLflow request may take (MLFLOW_HTTP_REQUEST_TIMEOUT, unless set); no retry.
    mlflow_timeout_s: float = 5.0
    # node_exporter textfile collector: a directory (the file is pipeline_<run id>.prom) or
    # a path ending in .prom.
    prometheus_textfile: str | None = None
    # Prometheus Pushgateway base URL (http://host:9091); metrics are PUT to
    # /metrics/job/<pushgateway_job>/run_id/<run id>.
    pushgateway_url: str | None = None
    pushgateway_job: str = "pipeline"
    pushgateway_timeout_s: float = 5.0
    # Environment variables holding the Pushgateway's basic-auth user and password.
    pushgateway_username_env: str = "PIPELINE_PUSHGATEWAY_USERNAME"
    pushgateway_password_env: str = "PIPELINE_PUSHGATEWAY_PASSWORD"

    def problems(self) -> list[str]:
        out: list[str] = []
        for key in ("mlflow_timeout_s", "pushgateway_timeout_s"):
            if getattr(self, key) <= 0:
                out.append(f"tracking.{key}: must be > 0, got {getattr(self, key)}")
        url = self.pushgateway_url
        if url is not None and not url.startswith(("http://", "https://")):
            out.append(f"tracking.pushgateway_url: must start with http:// or https://, got "
                       f"{url!r}")
        if not self.mlflow_experiment.strip():
            out.append("tracking.mlflow_experiment: must not be empty")
        return out


@dataclass(frozen=True)
class PipelineConfig:
    """The whole resolved configuration of one run."""

    run_id: str | None = None
    # The modalities this run processes; each gets its own ingest/dedup/train/evaluate.
    modalities: tuple[str, ...] = ("text", "images", "transactions")
    storage: StorageConfig = field(default_factory=StorageConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    inputs: InputsConfig = field(default_factory=InputsConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gates: GatesConfig = field(default_factory=GatesConfig)
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


def config_from_dict(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> PipelineConfig:
    """Build and validate a `PipelineConfig`; raises one `ConfigError` listing every problem.

    A relative local `storage.root` (the default `file://./data`, or a bare path) is
    resolved here, once, against this process's working directory: every job spec, run.json
    and Spark or Ray worker then sees the same absolute URL (a Ray job would otherwise
    resolve it against its own working directory, `runtime_resources/.../_ray_pkg_*`)."""
    merged: dict[str, Any] = deep_copy(data)
    problems = apply_overrides(merged, overrides)
    cfg = build_dataclass(PipelineConfig, merged, "", problems)
    problems.extend(check_values(cfg))
    if problems:
        raise ConfigError(problems)
    root = cfg.storage.root
    if "://" not in root or root.startswith("file://"):
        cfg = dataclasses.replace(cfg, storage=dataclasses.replace(cfg.storage,
                                                                   root=to_url(root)))
    return cfg


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    """Load YAML at `path` (or the defaults when None), apply overrides, validate."""
    data: Any = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc
        if not isinstance(data, Mapping):
            raise ConfigError([f"{path}: top level must be a mapping, got {type(data).__name__}"])
    return config_from_dict(data, overrides)


def _looks_secret(name: str) -> bool:
    # Judged by its words (pipeline/redact.py): `*_env` fields name a variable, they do
    # not hold its value; "tokens" is a count (evaluate.max_new_tokens), not a credential.
    return secret_key(name)


def _secret_text(value: Any) -> bool:
    return isinstance(value, str) and secret_value(value)


def to_dict(obj: Any, redact: bool = True) -> Any:
    """Plain JSON-ready data for a config (sub)tree, with secrets masked when `redact`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            secret = (f.metadata.get("secret", False) or _looks_secret(f.name)
                      or _secret_text(value))
            out[f.name] = REDACTED if (redact and secret and value) else to_dict(value, redact)
        return out
    if isinstance(obj, Mapping):
        return {
            str(k): REDACTED if (redact and (_looks_secret(str(k)) or _secret_text(v)))
            else to_dict(v, redact)
            for k, v in obj.items()
        }
    if isinstance(obj, (tuple, list)):
        # e.g. spark.submit_args: ["--conf", "spark.hadoop.fs.s3a.secret.key=..."]
        return [REDACTED if (redact and _secret_text(v)) else to_dict(v, redact)
                for v in obj]
    return obj


def env_secret(var: str) -> str | None:
    """Read a secret from the environment; the only way secrets enter the pipeline."""
    value = os.environ.get(var)
    return value or None
