"""Transaction dedup: exact copies, replays, label conflicts, probable retries, velocity.

Everything here is Spark window functions over built-in expressions; no Python runs per row.

1. Label conflicts. When copies of one `txn_id` disagree on `is_fraud` (null counts as its
   own value), we cannot tell which label is right, so every copy of that txn_id goes to
   quarantine with reason LABEL_CONFLICT (stage "dedup"). Conflicts are decided on the full
   input first, so no duplicate row ever points at a quarantined one.
2. Exact copies and replays. Among the remaining copies of a txn_id, the first by
   (ts, source, content_hash) is kept. Another copy with the same content_hash is rule
   `txn_exact`; one with different content (a replay, e.g. a later ts) is `txn_replay`.
3. Probable retries. Among the kept transactions, group by (account_token, currency, amount,
   merchant) and order by (ts, txn_id). A transaction that follows the previous one of its
   group by at most `retry_window_s` seconds is a probable retry. Retries chain: a burst of
   attempts each within the window of the one before is one retry chain, whose head (its
   first attempt) is the transaction they all retry. We use chains rather than "within the
   window of the last *kept* one" because it gives the same retry set under both policies
   and needs no sequential scan. Policy "drop": retries become duplicates (rule `txn_retry`,
   kept_id = chain head). Policy "flag": they stay, with `is_probable_retry = true`.
4. Velocity: `velocity_1h` / `velocity_24h` = number of kept transactions of the same
   account_token with a timestamp strictly earlier than this one and at most 1 h / 24 h
   before it (range windows over microseconds).

Ids: copies of one transaction share `txn_id`, so in the duplicates table `dropped_id` is the
dropped row's `source` (raw file URI:line, unique per raw row) and `kept_id` is the kept
row's `txn_id` (unique among kept rows). `cluster_id` is the txn_id of the chain head: a
transaction, its exact copies, replays and retries share it, so the split keeps them
together. Similarity is 1.0 for all three rules (they are rule matches, not estimates).

The three outputs share one lineage; persist the input (or the outputs) before writing all
three, or Spark recomputes the windows once per output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from pipeline.config import DedupConfig
from pipeline.ingest.common import quarantine_rows

STAGE = "dedup"
LABEL_CONFLICT = "LABEL_CONFLICT"
RULE_EXACT, RULE_REPLAY, RULE_RETRY = "txn_exact", "txn_replay", "txn_retry"
RETRY_KEYS = ("account_token", "currency", "amount", "merchant")
_MICROS = 1_000_000


@dataclass
class TxnDedupResult:
    """Kept rows (input columns + cluster_id, is_probable_retry, velocity_1h, velocity_24h),
    the duplicates table and the LABEL_CONFLICT quarantine rows."""

    kept: DataFrame
    duplicates: DataFrame
    quarantine: DataFrame


def _duplicates(df: DataFrame, rule: Column, kept_id: Column, cluster: Column) -> DataFrame:
    return df.select(
        F.col("source").cast("string").alias("dropped_id"),
        kept_id.cast("string").alias("kept_id"),
        rule.alias("rule"),
        F.lit(1.0).alias("similarity"),
        cluster.cast("string").alias("cluster_id"),
    )


def _conflict_quarantine(conflicts: DataFrame) -> DataFrame:
    detail = F.concat(
        F.lit("txn_id "), F.col("txn_id"), F.lit(": "), F.col("_n").cast("string"),
        F.lit(" copies disagree on is_fraud (labels "), F.col("_labels"), F.lit(")"))
    # A short description of the row; tokens and amounts only, no raw card data exists here.
    raw = F.concat_ws(
        " ", F.concat(F.lit("txn_id="), F.col("txn_id")),
        F.concat(F.lit("ts="), F.date_format("ts", "yyyy-MM-dd'T'HH:mm:ss'Z'")),
        F.concat(F.lit("amount="), F.col("amount").cast("string"), F.lit(" "), F.col("currency")),
        F.concat(F.lit("merchant="), F.col("merchant")),
        F.concat(F.lit("is_fraud="), F.coalesce(F.col("is_fraud").cast("string"), F.lit("null"))))
    return quarantine_rows(conflicts, STAGE, F.col("source"), F.lit(LABEL_CONFLICT), detail, raw)


def transaction_dedup(spark: SparkSession, txns: DataFrame, cfg: DedupConfig, *,
                      ids_given: bool = True,
                      retry_keys: Sequence[str] = RETRY_KEYS) -> TxnDedupResult:
    """Deduplicate curated transactions (see the module docstring for the rules).

    `txns` has the curated transactions schema. Counts reconcile exactly:
    `txns.count() == kept.count() + duplicates.count() + quarantine.count()`.

    `ids_given=False` (a table whose ids were made from file and line): copies are found by
    `content_hash` instead of `txn_id`, so exact copies are still dropped (there are no
    replays to tell apart). `retry_keys`: the columns a retry shares with the attempt
    before it, those of `RETRY_KEYS` the table has; none means no retry detection.
    """
    del spark  # same signature as the other modalities; everything derives from `txns`
    in_cols = txns.columns
    by_id = Window.partitionBy("txn_id" if ids_given else "content_hash")
    ordered = by_id.orderBy("ts", "source", "content_hash")
    label = F.coalesce(F.col("is_fraud").cast("int"), F.lit(-1))
    staged = (
        txns.withColumn("_lab_min", F.min(label).over(by_id))
        .withColumn("_lab_max", F.max(label).over(by_id))
        .withColumn("_rank", F.row_number().over(ordered))
        .withColumn("_first_hash", F.first("content_hash").over(ordered))
        .withColumn("_first_id", F.first("txn_id").over(ordered))
    )
    conflict = F.col("_lab_min") != F.col("_lab_max")
    conflicts = (
        staged.where(conflict)
        .withColumn("_n", F.count(F.lit(1)).over(by_id))
        .withColumn("_labels", F.array_join(F.array_sort(F.collect_set(
            F.coalesce(F.col("is_fraud").cast("string"), F.lit("null"))).over(by_id)), "/"))
    )
    clean = staged.where(~conflict)
    copies = clean.where(F.col("_rank") > 1)
    firsts = clean.where(F.col("_rank") == 1).select(*in_cols)

    # Retry chains over the survivors of step 2.
    keys = list(retry_keys)
    if keys:
        group = Window.partitionBy(*keys).orderBy("_t", "txn_id")
        window_us = int(cfg.retry_window_s) * _MICROS
        keys_present = F.col("ts").isNotNull()
        for key in keys:
            keys_present = keys_present & F.col(key).isNotNull()
        chained = (
            firsts.withColumn("_t", F.unix_micros("ts"))
            .withColumn("_prev_t", F.lag("_t").over(group))
            .withColumn("_is_retry", keys_present & F.col("_prev_t").isNotNull()
                        & ((F.col("_t") - F.col("_prev_t")) <= F.lit(window_us)))
            .withColumn("_head", F.last(F.when(~F.col("_is_retry"), F.col("txn_id")),
                                        ignorenulls=True).over(
                                            group.rowsBetween(Window.unboundedPreceding,
                                                              Window.currentRow)))
        )
    else:  # no retry keys in the table: every transaction heads its own chain
        chained = firsts.withColumn("_is_retry", F.lit(False)).withColumn(
            "_head", F.col("txn_id"))
    drop = cfg.retry_policy == "drop"
    head_of = chained.select(F.col("txn_id").alias("_kept_txn"), "_head")
    copies_final = copies.join(head_of, copies["_first_id"] == head_of["_kept_txn"], "inner")
    copy_rule = F.when(F.col("content_hash") == F.col("_first_hash"), F.lit(RULE_EXACT)) \
        .otherwise(F.lit(RULE_REPLAY))
    duplicates = _duplicates(copies_final, copy_rule,
                             F.col("_head") if drop else F.col("_first_id"), F.col("_head"))
    if drop:
        duplicates = duplicates.unionByName(_duplicates(
            chained.where("_is_retry"), F.lit(RULE_RETRY), F.col("_head"), F.col("_head")))
        survivors = chained.where(~F.col("_is_retry"))
    else:
        survivors = chained

    kept = add_velocity(
        survivors.withColumn("cluster_id", F.col("_head"))
        .withColumn("is_probable_retry", F.col("_is_retry").cast("boolean"))
    )
    kept = kept.select(*in_cols, "cluster_id", "is_probable_retry", "velocity_1h",
                       "velocity_24h")
    return TxnDedupResult(kept=kept, duplicates=duplicates,
                          quarantine=_conflict_quarantine(conflicts))


def add_velocity(df: DataFrame, account_col: str = "account_token",
                 ts_col: str = "ts") -> DataFrame:
    """`df` + `velocity_1h`, `velocity_24h`: earlier rows of the same account within 1 h /
    24 h strictly before each row's timestamp (0 when the account is null)."""
    t = F.unix_micros(F.col(ts_col))
    w = Window.partitionBy(account_col).orderBy(t)
    out = df
    for name, seconds in (("velocity_1h", 3600), ("velocity_24h", 86_400)):
        # rangeBetween(-S, -1) in microseconds: earlier by at least 1 us, at most S seconds.
        count = F.count(F.lit(1)).over(w.rangeBetween(-seconds * _MICROS, -1))
        out = out.withColumn(name, F.when(F.col(account_col).isNull(), F.lit(0))
                             .otherwise(count).cast("int"))
    return out
