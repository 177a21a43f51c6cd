"""Inference: Ray Data `map_batches` through a pool of model actors, or in this process.

`score(ds, spec)` maps a Dataset of input rows through `Predictor`, a callable class: Ray
starts `evaluate.actors` actors, each loads and verifies the model once (`load_trained`),
then turns every Arrow batch into per-row prediction columns with `predict_batch`. The
conversion of rows into tensors is the task's own (`task.to_tensors(train=False)`), so rows
are scored exactly as validation scored them during training. `score_in_process` does the
same `predict_batch` calls on tables already in this process, without a pool: for a few
thousand rows, a pool's start (new worker processes loading torch and the model, about
10 s on 2 cores) costs more than the scoring (see `scores_in_process`).

Prediction schema (one row per input row; each modality's spec spells it out in
`evaluation.prediction_schema`):

- text: `doc_id`, `n_bytes` (UTF-8 bytes scored), `nll_bits` (summed NLL of those bytes in
  bits), `eos_nll_bits` (NLL of the end-of-document token). The whole document is scored in
  consecutive, non-overlapping windows of `train.text.seq_len` tokens (each window's
  context starts fresh), so sums over documents give corpus bits per byte exactly.
- images: `image_id`, `label` (true label, null when the input has none), `pred_label`,
  `confidence` (max probability), `nll` (cross-entropy of the true label in nats, null
  when unknown), and `prob_<class>` for each class of the trained vocabulary.
- transactions: `txn_id`, `is_fraud` (null when the input has none), `fraud_score`
  (predicted fraud probability).

Every row also carries `model_checkpoint` (URL) and `model_digest` (SHA-256 of model.pt)
for lineage. Output order is made deterministic by the caller (`collect_sorted`,
`stream_sorted`: by id, then by a row key derived from file and position).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from pipeline.config import EvaluateConfig, PipelineConfig
from pipeline.evaluate.model import TrainedModel, load_trained
from pipeline.storage import Location
from pipeline.train.data import numpy_friendly
from pipeline.train.tasks.images import ImageClassifierTask
from pipeline.train.tasks.text import BOS_ID, EOS_ID, N_BYTES, PAD_ID, TextLMTask

if TYPE_CHECKING:
    import ray.data

    from pipeline.modalities import EvaluationSpec

#: a pass-through row key (unique per input row) that makes the sort order total
ORDER_COLUMN = "_order"
#: a pass-through tag of the split a row came from (several splits scored in one pass)
SPLIT_COLUMN = "_split"
LINEAGE_COLUMNS = ("model_checkpoint", "model_digest")
PROB_PREFIX = "prob_"


def evaluation_of(modality: str) -> EvaluationSpec:
    """The evaluation spec of `modality`; ValueError when it has no trained model."""
    from pipeline import modalities

    spec = modalities.get(modality).evaluation
    if spec is None:
        raise ValueError(f"modality {modality!r} has no model to score")
    return spec


def id_column(modality: str) -> str:
    from pipeline import modalities

    return modalities.get(modality).id_column


def required_columns(modality: str) -> tuple[str, ...]:
    """Columns an input table must have to be scored by `modality`'s model."""
    return (id_column(modality), *evaluation_of(modality).feature_columns)


def input_columns(modality: str, available: Any = None,
                  cfg: PipelineConfig | None = None) -> list[str]:
    """Columns to read: the required ones (with `cfg`, also those its configuration adds,
    e.g. declared transaction features), plus the label when `available` has it (or
    always, when `available` is None)."""
    cols = list(required_columns(modality))
    if cfg is not None:
        cols += [c for c in evaluation_of(modality).config_columns(cfg) if c not in cols]
    label = evaluation_of(modality).label_column
    if label and (available is None or label in available):
        cols.append(label)
    return cols


# --- per-batch scoring (pure functions of a model and an Arrow batch) -------------------

def document_windows(texts: pa.Array | pa.ChunkedArray, seq_len: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows [W, seq_len + 1] int64, document index [W], bytes per document [B]).

    Document i is the stream BOS + utf8 + EOS; window k of it starts at stream position
    k * seq_len, so its seq_len targets are exactly the positions no earlier window
    scored. Vectorized over the batch's concatenated UTF-8 buffer."""
    arr = pc.fill_null(texts, "")
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, dtype=np.int64)[arr.offset: arr.offset + len(arr) + 1]
    data = (np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None
            else np.zeros(0, dtype=np.uint8))
    n = np.diff(offsets)
    n_win = -(-(n + 1) // seq_len)  # targets per document: its bytes and EOS
    doc = np.repeat(np.arange(len(n)), n_win)
    first = np.repeat(np.cumsum(n_win) - n_win, n_win)
    shift = (np.arange(len(doc)) - first) * seq_len
    pos = shift[:, None] + np.arange(seq_len + 1, dtype=np.int64)[None, :]
    nd = n[doc][:, None]
    out = np.full(pos.shape, PAD_ID, dtype=np.int64)
    out[pos == 0] = BOS_ID
    out[pos == nd + 1] = EOS_ID
    is_byte = (pos >= 1) & (pos <= nd)
    out[is_byte] = data[(offsets[:-1][doc][:, None] + pos - 1)[is_byte]]
    return out, doc, n


def text_scores(trained: TrainedModel, table: pa.Table, chunk: int) -> dict[str, Any]:
    task = trained.task
    assert isinstance(task, TextLMTask)
    seq_len = task.seq_len
    windows, doc, n = document_windows(table.column("text"), seq_len)
    byte_bits = np.zeros(len(windows))
    eos_bits = np.zeros(len(windows))
    with torch.no_grad():
        for lo in range(0, len(windows), chunk):
            w = torch.from_numpy(windows[lo:lo + chunk])
            inputs, targets = w[:, :-1], w[:, 1:]
            logits = trained.model(inputs).float()
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                  ignore_index=PAD_ID, reduction="none").reshape(targets.shape)
            nll = nll.double() / math.log(2.0)
            byte_bits[lo:lo + chunk] = (nll * (targets < N_BYTES)).sum(1).numpy()
            eos_bits[lo:lo + chunk] = (nll * (targets == EOS_ID)).sum(1).numpy()
    return {"n_bytes": pa.array(n, pa.int64()),
            "nll_bits": pa.array(np.bincount(doc, byte_bits, minlength=len(n))),
            "eos_nll_bits": pa.array(np.bincount(doc, eos_bits, minlength=len(n)))}


def _numpy(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}


def image_scores(trained: TrainedModel, table: pa.Table, chunk: int) -> dict[str, Any]:
    task = trained.task
    assert isinstance(task, ImageClassifierTask)
    labels = task.labels
    vocab = {lab: i for i, lab in enumerate(labels)}
    true = (table.column("label").to_pylist() if "label" in table.column_names
            else [None] * table.num_rows)
    true_idx = np.array([vocab.get(str(t), -1) if t is not None else -1 for t in true])
    batch = _numpy(table.select(["image_id", "bytes"]))
    # The task's conversion needs a label per row; ground truth is handled here instead.
    batch["label"] = np.full(table.num_rows, labels[0], dtype=object)
    logp_parts = []
    with torch.no_grad():
        for lo in range(0, table.num_rows, chunk):
            part = {k: v[lo:lo + chunk] for k, v in batch.items()}
            x = trained.task.to_tensors(part, train=False)["images"]
            logp_parts.append(torch.log_softmax(trained.model(x).float(), dim=1).double())
    logp = (torch.cat(logp_parts).numpy() if logp_parts
            else np.zeros((0, len(labels))))
    probs = np.exp(logp)
    pred = logp.argmax(axis=1) if len(logp) else np.zeros(0, dtype=np.int64)
    known = true_idx >= 0
    nll = np.where(known, -logp[np.arange(len(logp)), np.maximum(true_idx, 0)], np.nan)
    cols: dict[str, Any] = {
        "label": pa.array(true, pa.string()),
        "pred_label": pa.array([labels[i] for i in pred], pa.string()),
        "confidence": pa.array(probs.max(axis=1) if len(probs) else np.zeros(0)),
        "nll": pa.array(nll, mask=~known),
    }
    cols.update({f"{PROB_PREFIX}{lab}": pa.array(probs[:, i]) for i, lab in enumerate(labels)})
    return cols


def transaction_scores(trained: TrainedModel, table: pa.Table, chunk: int) -> dict[str, Any]:
    wanted = [c for c in trained.task.columns if c != "is_fraud"]
    batch = _numpy(table.select(wanted))
    # The task's raw-row conversion also builds the training target; it is not used here.
    batch["is_fraud"] = np.zeros(table.num_rows, dtype=np.float32)
    scores = []
    with torch.no_grad():
        for lo in range(0, table.num_rows, chunk):
            t = trained.task.to_tensors({k: v[lo:lo + chunk] for k, v in batch.items()},
                                        train=False)
            logits = trained.model(t["numeric"], t["categories"]).double()
            scores.append(torch.sigmoid(logits).numpy())
    truth = (table.column("is_fraud").cast(pa.bool_()) if "is_fraud" in table.column_names
             else pa.nulls(table.num_rows, pa.bool_()))
    return {"is_fraud": truth,
            "fraud_score": pa.array(np.concatenate(scores) if scores else np.zeros(0))}


def predict_batch(trained: TrainedModel, table: pa.Table, chunk: int = 256) -> pa.Table:
    """Prediction columns (see the module docstring) of one Arrow batch of input rows,
    scored `chunk` rows (text: windows) at a time."""
    name = trained.meta.task
    table = numpy_friendly(table)
    id_col = id_column(name)
    cols: dict[str, Any] = {id_col: table.column(id_col).cast(pa.string())}
    cols.update(evaluation_of(name).score(trained, table, max(1, chunk)))
    n = table.num_rows
    cols["model_checkpoint"] = pa.array([trained.checkpoint_url] * n, pa.string())
    cols["model_digest"] = pa.array([trained.checkpoint_digest] * n, pa.string())
    for passthrough in (ORDER_COLUMN, SPLIT_COLUMN):
        if passthrough in table.column_names:
            cols[passthrough] = table.column(passthrough)
    return pa.table(cols)


# --- the actor pool ---------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    """Everything an actor needs to load the model (pickled into each actor)."""

    cfg: PipelineConfig
    modality: str
    checkpoint: Location
    checkpoint_digest: str  # what the driver verified; actors must load the same bytes
    task_state: Mapping[str, Any] = field(default_factory=dict)


class Predictor:
    """Ray Data callable class: loads the model once per actor, scores Arrow batches."""

    def __init__(self, spec: ModelSpec) -> None:
        torch.set_num_threads(spec.cfg.evaluate.cpus_per_actor)
        self.chunk = spec.cfg.evaluate.batch_size
        self.trained = load_trained(spec.cfg, spec.modality, spec.checkpoint,
                                    spec.task_state)
        if self.trained.checkpoint_digest != spec.checkpoint_digest:
            raise RuntimeError(
                f"{spec.checkpoint} changed after the driver verified it: model.pt "
                f"sha256 {self.trained.checkpoint_digest[:12]} != "
                f"{spec.checkpoint_digest[:12]}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return predict_batch(self.trained, batch, self.chunk)


def score(ds: ray.data.Dataset, spec: ModelSpec) -> ray.data.Dataset:
    """`ds` (input rows) mapped through the model actor pool: prediction rows (lazy)."""
    from ray.data import ActorPoolStrategy

    ev = spec.cfg.evaluate
    scored = ds.map_batches(Predictor, fn_constructor_kwargs={"spec": spec},
                            batch_size=ev.batch_size, batch_format="pyarrow",
                            compute=ActorPoolStrategy(size=ev.actors),
                            num_cpus=ev.cpus_per_actor)
    # Batches are cut from the blocks in the order they reach the pool. Without a fixed
    # order, a row meets other neighbours on another run, and a model's float32 output for
    # a row depends (in its last bits) on the batch it is computed in: the same table once
    # scored to different bytes. In input order, the batches, hence the scores, are fixed.
    # (This dataset's own context: the caller's `ds` and the global context are untouched.)
    scored.context.execution_options.preserve_order = True
    return scored


def scores_in_process(rows: int | None, ev: EvaluateConfig) -> bool:
    """Whether `rows` input rows (None: not known in advance) are scored in this process
    rather than through the actor pool: when they are known and at most
    `evaluate.in_process_max_rows`."""
    return rows is not None and rows <= ev.in_process_max_rows


def score_in_process(trained: TrainedModel, tables: Sequence[pa.Table], batch_size: int,
                     threads: int) -> pa.Table:
    """The rows of `tables`, in order, scored in this process `batch_size` rows at a time
    with `threads` torch threads (as an actor with `evaluate.cpus_per_actor` CPUs would):
    prediction rows in input order (`sort_predictions` orders them)."""
    table = pa.concat_tables(tables, promote_options="permissive") if tables else None
    if table is None or not table.num_rows:
        return pa.table({})
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        parts = [predict_batch(trained, table.slice(start, batch_size), batch_size)
                 for start in range(0, table.num_rows, batch_size)]
    finally:
        torch.set_num_threads(before)
    return pa.concat_tables(parts, promote_options="permissive")


def _sort_keys(table: pa.Table, id_col: str) -> list[tuple[str, str]]:
    keys = [(id_col, "ascending")]
    if ORDER_COLUMN in table.column_names:
        keys.append((ORDER_COLUMN, "ascending"))
    return keys


def collect_sorted(ds: ray.data.Dataset, modality: str) -> pa.Table:
    """All prediction rows on the driver, sorted by id (then row key), without the key."""
    import ray

    parts = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return sort_predictions(pa.concat_tables(parts, promote_options="permissive")
                            if parts else pa.table({}), modality)


def sort_predictions(table: pa.Table, modality: str) -> pa.Table:
    """Prediction rows sorted by id (then row key), without the key."""
    id_col = id_column(modality)
    if not table.num_rows:
        return pa.table({id_col: pa.array([], pa.string())})
    table = table.sort_by(_sort_keys(table, id_col))
    return table.drop_columns([c for c in (ORDER_COLUMN,) if c in table.column_names])


def stream_sorted(ds: ray.data.Dataset, modality: str, batch_rows: int = 65_536
                  ) -> Iterator[pa.Table]:
    """Prediction rows sorted by id (then row key) with a distributed Ray sort, streamed
    to the driver in order: for tables whose predictions need not fit in memory."""
    from ray.data import DataContext

    id_col = id_column(modality)
    ctx = DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True  # blocks in sorted order, not as finished
    try:
        for batch in ds.sort([id_col, ORDER_COLUMN]).iter_batches(
                batch_size=batch_rows, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)
            yield batch.drop_columns([ORDER_COLUMN])
    finally:
        ctx.execution_options.preserve_order = before
