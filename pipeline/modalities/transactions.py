"""The transactions modality: card-transaction CSV / JSONL -> a fraud classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pipeline.gates import GateSpec
from pipeline.ingest.reasons import TRANSACTION_REASONS
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

    from pipeline.config import PipelineConfig, TransactionInputConfig, TransactionTaskConfig
    from pipeline.evaluate.model import TrainedModel
    from pipeline.html import Html
    from pipeline.train.task import Task


def _inputs(cfg: PipelineConfig) -> TransactionInputConfig:
    return cfg.inputs.transactions


def _ingest(req: IngestRequest) -> Any:
    from pipeline.ingest.tokens import resolve_hmac_key, uses_sample_data
    from pipeline.ingest.transactions import ingest_transactions

    t = req.cfg.inputs.transactions
    key = resolve_hmac_key(t, sample_data=uses_sample_data(t))
    return ingest_transactions(req.spark, req.cfg.inputs.transactions, req.inputs, key)


def _key_parts(cfg: PipelineConfig) -> Mapping[str, Any]:
    """Tokens change when the HMAC key does: its non-secret id is part of the cache key.
    Resolved by the same rule as `_ingest` (sample data or not, never the Spark master), so
    the id describes the key the ingest uses."""
    from pipeline.ingest.tokens import hmac_key_id, resolve_hmac_key, uses_sample_data

    t = cfg.inputs.transactions
    return {"hmac_key_id": hmac_key_id(resolve_hmac_key(t, sample_data=uses_sample_data(t)))}


def _dedup(spark: SparkSession, curated: DataFrame, cfg: PipelineConfig) -> DedupOutput:
    from pipeline.config_transactions import ROLE_COLUMNS
    from pipeline.dedup.transactions import RETRY_KEYS, transaction_dedup

    schema = cfg.inputs.transactions.table_schema
    present = {ROLE_COLUMNS[r] for r in schema.mapped}
    if schema.currency_constant is not None:
        present.add("currency")
    # A retry repeats the account and amount at least; other keys count where they exist.
    keys = ([k for k in RETRY_KEYS if k in present]
            if {"account_token", "amount", "ts"} <= present else [])
    txn = transaction_dedup(spark, curated, cfg.dedup, ids_given=schema.id is not None,
                            retry_keys=keys)
    return DedupOutput(txn.kept, txn.duplicates, txn.quarantine)


def _consistency(df: DataFrame, n: int) -> dict[str, Any]:
    from pyspark.sql import functions as F

    from pipeline.jsonutil import json_clean
    from pipeline.quality import group_counts

    if "amount" not in df.columns:
        return {}
    first = df.agg(F.sum(F.when(F.col("amount") <= 0, 1)).alias("bad"),
                   F.min("ts").alias("ts_min"), F.max("ts").alias("ts_max")).first()
    assert first is not None
    out: dict[str, Any] = {
        "non_positive_amount": int(first["bad"] or 0) / n if n else 0.0,
        "ts_range": [json_clean(first["ts_min"]), json_clean(first["ts_max"])],
        "currencies": group_counts(df, "currency")}
    if "is_probable_retry" in df.columns:
        r = df.agg(F.sum(F.col("is_probable_retry").cast("int"))).first()
        out["probable_retry_rate"] = int((r[0] if r is not None else 0) or 0) / n if n else 0.0
    return out


def _label_balance(df: DataFrame, n: int) -> dict[str, Any]:
    from pipeline.quality import group_counts

    if "is_fraud" not in df.columns:
        return {"counts": {}}
    labels = group_counts(df, "is_fraud")
    return {"counts": labels, "fraud_rate": labels.get("true", 0) / n if n else 0.0}


def _synth(out_dir: Any, scale: float, seed: int) -> Any:
    from pipeline.synth.transactions import generate_transactions

    return generate_transactions(out_dir, scale, seed)


def _problems(cfg: PipelineConfig) -> list[str]:
    from pipeline.config_transactions import schema_problems
    from pipeline.ingest.currencies import ISO_4217

    t = cfg.inputs.transactions
    out = []
    if t.max_amount <= 0:
        out.append(f"inputs.transactions.max_amount: must be > 0, got {t.max_amount}")
    if t.min_amount is not None and t.min_amount >= t.max_amount:
        out.append(f"inputs.transactions.min_amount: must be < max_amount ({t.max_amount}), "
                   f"got {t.min_amount}")
    if t.schema is not None:
        out += schema_problems(t.schema, "inputs.transactions.schema", frozenset(ISO_4217))
    return out


def _task_config(cfg: PipelineConfig) -> TransactionTaskConfig:
    return cfg.train.transactions


def _unavailable(cfg: PipelineConfig) -> str | None:
    if cfg.inputs.transactions.table_schema.label is None:
        return ("no label column: inputs.transactions.schema maps no `label`, so the fraud "
                "model has nothing to learn (the table is still ingested and deduplicated)")
    return None


def _train_extra(cfg: PipelineConfig) -> Mapping[str, Any]:
    """A declared schema decides the model's inputs: part of the train stage's key."""
    from pipeline.config import to_dict

    schema = cfg.inputs.transactions.schema
    return {} if schema is None else {"transactions_schema": to_dict(schema)}


def _feature_columns(cfg: PipelineConfig) -> tuple[str, ...]:
    return tuple(cfg.inputs.transactions.table_schema.feature_columns())


def _make_task(cfg: PipelineConfig, labels: Sequence[str] | None) -> Task:
    from pipeline.train.tasks.transactions import FraudTask

    return FraudTask.from_config(cfg, labels)


def _score(trained: TrainedModel, table: pa.Table, chunk: int) -> dict[str, Any]:
    from pipeline.evaluate.inference import transaction_scores

    return transaction_scores(trained, table, chunk)


def _figures(predictions: Mapping[str, pa.Table], labels: Sequence[str], points: int
             ) -> tuple[dict[str, float], dict[str, Any]]:
    from pipeline.evaluate.figures import fraud_figures

    return fraud_figures(predictions["test"], predictions.get("val"), points)


def _summary(m: Mapping[str, float | None]) -> str:
    def f(key: str) -> str:
        return metric_text(m, key)

    # PR-AUC first: with rare fraud (0.2%) ROC-AUC looks good for weak models; PR-AUC is
    # read against the fraud rate (a random scorer's PR-AUC).
    return (f"test PR-AUC {f('pr_auc')} (fraud rate {f('fraud_rate')}), ROC-AUC "
            f"{f('roc_auc')}; at threshold {f('threshold')}: precision {f('precision')}, "
            f"recall {f('recall')}")


def _section(report: Mapping[str, Any]) -> list[Html]:
    from pipeline.evaluate.report import transaction_section

    return transaction_section(report)


def _inspect(paths: Sequence[str]) -> str:
    from pipeline.inspect import inspect_table, transactions_yaml

    return transactions_yaml(inspect_table(paths))


SPEC = ModalitySpec(
    inspect=_inspect,
    name="transactions",
    record="transaction",
    input_config=_inputs,
    ingest=_ingest,
    id_column="txn_id",
    # txn_id is given by the data and may repeat (replays): source makes the order total.
    curated_keys=("txn_id", "source"),
    reasons=TRANSACTION_REASONS,
    dedup=_dedup,
    # What the declared schema's format does not parse, ingest quarantines as
    # UNSUPPORTED_FILE itself (pipeline.ingest.transactions.ALL_EXTENSIONS).
    input_extensions=(".csv", ".tsv", ".txt", ".dat", ".asc", ".jsonl", ".json", ".ndjson",
                      ".parquet"),
    # The line formats are also read compressed (.gz/.bz2/.zst, pipeline.ingest.lines).
    compressed_extensions=(".csv", ".tsv", ".txt", ".dat", ".asc", ".jsonl", ".json",
                           ".ndjson"),
    dedup_report=DedupReportSpec(id_column="source", content_column="source",
                                 pair_rules=None),
    quality=QualitySpec(range_columns=("amount", "velocity_1h", "velocity_24h"),
                        consistency=_consistency, label_balance=_label_balance),
    ingest_key_parts=_key_parts,
    synth=_synth,
    config_problems=_problems,
    training=TrainingSpec(
        config=_task_config,
        make_task=_make_task,
        extra_config=_train_extra,
        unavailable=_unavailable,
        evaluation=EvaluationSpec(
            feature_columns=("amount", "ts", "mcc", "country", "currency", "velocity_1h",
                             "velocity_24h"),
            score=_score,
            figures=_figures,
            summary=_summary,
            report_section=("scores and threshold", _section),
            headline=("pr_auc", "roc_auc", "threshold", "precision", "recall", "f1",
                      "val_f1", "rows", "positives", "fraud_rate", "unlabeled_rows"),
            label_column="is_fraud",
            config_columns=_feature_columns,
            # The decision threshold is chosen on val, never on test.
            splits=("val", "test"),
            prediction_schema="txn_id: string, is_fraud: bool (nullable), fraud_score: "
                              "float64",
        ),
    ),
    metric_gates=(
        GateSpec("min_fraud_pr_auc", ("metrics", "pr_auc"), "PR-AUC", ">="),
        GateSpec("min_fraud_roc_auc", ("metrics", "roc_auc"), "ROC-AUC", ">="),
    ),
)
