"""A fourth, toy modality defined entirely outside `pipeline/`: sensor readings.

Raw data: `.csv` lines `sensor,value,label` (no header). Ingest curates well-formed lines
and quarantines the rest as BAD_READING; dedup drops exact repeats of (sensor, value,
label); training fits a linear classifier of the label from the value. It uses only the
public extension points: a `ModalitySpec`, the shared Spark readers and writers, the
exact-dedup helper and the `Task` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.modalities import (
    DedupOutput,
    DedupReportSpec,
    IngestRequest,
    ModalitySpec,
    QualitySpec,
    TrainingSpec,
)

NAME = "toy"


@dataclass(frozen=True)
class ToyInputs:
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class ToyTaskConfig:
    enabled: bool = True
    batch_size: int = 16
    lr: float = 0.05


def ingest_readings(req: IngestRequest) -> Any:
    from pyspark.sql import functions as F

    from pipeline.ingest.common import IngestResult, quarantine_rows
    from pipeline.ingest.lines import list_input_files, read_lines, stable_id

    files = list_input_files(req.inputs, [".csv"])
    lines = read_lines(req.spark, files).withColumn("source", F.concat(
        F.col("path"), F.lit(":"), F.col("line").cast("string")))
    parts = F.split(F.col("text"), ",")
    field = [F.get(parts, i) for i in range(3)]  # null, not an error, past the end
    value = field[1].try_cast("double")
    parsed = lines.withColumn("_ok", (F.size(parts) == 3) & value.isNotNull()
                              ).withColumn("value", value).persist()
    good = parsed.where("_ok")
    curated = good.select(
        stable_id(F.col("source")).alias("reading_id"), "source",
        field[0].alias("sensor"), "value", field[2].alias("label"),
        F.sha2(F.concat_ws("|", field[0], F.col("value").cast("string"), field[2]), 256
               ).alias("content_hash"))
    quarantine = quarantine_rows(parsed.where(~F.col("_ok")), f"ingest/{NAME}",
                                 F.col("source"), F.lit("BAD_READING"),
                                 F.lit("expected sensor,value,label"), F.col("text"))
    return IngestResult(curated, quarantine, int(lines.count()), parsed)


def dedup_readings(spark: Any, curated: Any, cfg: Any) -> DedupOutput:
    from pyspark.sql import functions as F

    from pipeline.dedup.exact import exact_dedup

    kept, duplicates = exact_dedup(curated, "reading_id", "content_hash")
    return DedupOutput(kept.withColumn("cluster_id", F.col("reading_id")), duplicates)


class ReadingTask:
    """Logistic regression of the label from the value (implements Task)."""

    name = NAME
    columns: tuple[str, ...] = ("value", "label")

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = tuple(labels)
        self._vocab = np.asarray(self.labels, dtype=str)

    def build_model(self) -> nn.Module:
        return nn.Linear(1, len(self.labels))

    def to_tensors(self, batch: Mapping[str, Any], train: bool,
                   generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        x = torch.as_tensor(np.asarray(batch["value"], dtype=np.float32)[:, None])
        y = np.searchsorted(self._vocab, np.asarray(batch["label"], dtype=object).astype(str))
        return {"x": x, "y": torch.as_tensor(y, dtype=torch.int64)}

    def loss(self, model: nn.Module, batch: Mapping[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = model(batch["x"]).float()
        loss_sum = F.cross_entropy(logits, batch["y"], reduction="sum")
        n = batch["y"].numel()
        return loss_sum / max(n, 1), {"loss_sum": loss_sum.detach(),
                                      "count": torch.tensor(float(n))}

    def summarize(self, sums: Mapping[str, float]) -> dict[str, float]:
        n = sums.get("count", 0.0)
        return {"loss": sums["loss_sum"] / n if n else math.nan}


def make_spec(raw_folder: str) -> ModalitySpec:
    """The toy modality reading the `.csv` files under `raw_folder`."""
    inputs = ToyInputs(paths=(raw_folder,))
    return ModalitySpec(
        name=NAME,
        record="reading",
        input_config=lambda cfg: inputs,
        ingest=ingest_readings,
        id_column="reading_id",
        curated_keys=("reading_id",),
        reasons={"BAD_READING": "a line that is not sensor,value,label"},
        dedup=dedup_readings,
        dedup_report=DedupReportSpec(id_column="reading_id", content_column="source",
                                     pair_rules=None),
        quality=QualitySpec(range_columns=("value",)),
        training=TrainingSpec(config=lambda cfg: ToyTaskConfig(),
                              make_task=lambda cfg, labels: ReadingTask(labels or ()),
                              vocabulary_column="label"),
    )


def write_raw(folder: Any, rows: int = 120) -> dict[str, int]:
    """Readings under `folder` (a pathlib.Path): `rows` good lines in two files, 3 exact
    repeats, 2 bad lines. Returns the counts the pipeline must reproduce."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = [f"s{i % 7},{v:.3f},{'hot' if v > 0 else 'cold'}"
            for i, v in enumerate(rng.normal(size=rows))]
    half = rows // 2
    (folder / "a.csv").write_text("\n".join([*good[:half], "not a reading"]) + "\n")
    (folder / "b.csv").write_text("\n".join([*good[half:], *good[:3], "s1,NaNish,hot"])
                                  + "\n")
    return {"input": rows + 5, "curated": rows + 3, "quarantined": 2, "duplicates": 3}
