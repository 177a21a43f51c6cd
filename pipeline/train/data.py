"""The Parquet -> tensor data path: Ray Data shards with a deterministic order per epoch.

Why not `streaming_split` (Ray Train's default sharding)? It hands blocks to whichever
worker asks first, so which rows a rank sees, and in which order, depends on timing. A run
resumed in the middle of an epoch would then skip the wrong batches (Ray Train itself
keeps no position inside an epoch: ray-project/ray#37633). Here every row's place is a
pure function of (data, seed, epoch, world size):

1. Driver, once per run: `read_parquet` of exactly the files the stage manifest lists
   (relative to the stage folder, so the result does not depend on where the run lives),
   filter pushed down to `split == "train"` / `"val"`, decimals and timestamps cast to
   numpy-friendly types. Each row gets a key = splitmix64(row_hash ^ seed), where Ray
   Data's `row_hash` hashes (file path, row position); sorting on that key is a seeded
   global permutation that is deterministic by construction, whatever the block layout
   or cluster size. A task's optional `preprocess` hook (vectorized feature computation
   on Arrow) runs here too, so that it costs once per row, not once per row and epoch, and
   in parallel Ray Data tasks. The sorted train split is materialized and cut with
   `Dataset.split(world_size * CHUNKS_PER_RANK, equal=True)` into equal chunks (up to
   chunks-1 rows are dropped, as DistributedSampler(drop_last=True) would); val is cut
   into one contiguous, exact shard per rank with `split_at_indices`.
2. Every chunk and val shard is passed to the TorchTrainer as its own dataset with
   `DataConfig(datasets_to_split=[])`, so each worker can stream any chunk from the object
   store through its own DataIterator; no rows are re-read from Parquet and no Ray Data
   tasks run while the workers hold the CPUs (a cluster fully booked by training workers
   would otherwise starve the read tasks).
3. Epoch e, rank r: a permutation of the chunks seeded by (seed, e) gives rank r its
   CHUNKS_PER_RANK chunks (so rows move between ranks from epoch to epoch); they are
   streamed in that order, in windows of SHUFFLE_WINDOW_BATCHES batches, and each window
   is permuted with a generator seeded by (seed, e, r, window). Windows are cut from the
   concatenated row stream, not from blocks, so the batches are identical on every run.

All ranks get the same number of rows, hence the same number of batches per epoch, which
DDP needs. Resuming at batch b of epoch e replays the same stream and drops its first b
batches before any conversion.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.storage import Location, published_files, read_manifest

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

CHUNKS_PER_RANK = 4
SHUFFLE_WINDOW_BATCHES = 32
_ORDER = "_order"
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer: a bijective 64-bit mix (vectorized, wraps mod 2**64)."""
    z = np.asarray(x, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z & _MASK64


def numpy_friendly(table: pa.Table) -> pa.Table:
    """Decimals -> float64 (numpy has no decimal; exact to the cent below 2**53 cents) and
    tz-aware timestamps -> naive UTC, so batches convert to plain numpy arrays."""
    for i, f in enumerate(table.schema):
        if pa.types.is_decimal(f.type):
            table = table.set_column(i, f.name, pc.cast(table.column(i), pa.float64()))
        elif pa.types.is_timestamp(f.type) and f.type.tz is not None:
            table = table.set_column(i, f.name, table.column(i).cast(pa.timestamp(f.type.unit)))
    return table


#: a task's optional `preprocess(table) -> table` hook, run inside the Ray Data read
Preprocess = Callable[[pa.Table], pa.Table]


def _normalize_and_key(batch: pa.Table, seed: int, preprocess: Preprocess | None
                       ) -> pa.Table:
    salt = splitmix64(np.array([seed], dtype=np.uint64))[0]
    keys = splitmix64(batch.column("row_hash").to_numpy() ^ salt)
    out = numpy_friendly(batch.drop_columns(["row_hash", "split"]))
    if preprocess is not None:
        out = preprocess(out)
    return out.append_column(_ORDER, pa.array(keys, type=pa.uint64()))


@contextlib.contextmanager
def _ordered_data_context() -> Iterator[None]:
    # Datasets copy the current DataContext when they are created: turn order
    # preservation on (and the per-execution progress output off: workers run one short
    # execution per chunk and epoch) for ours, without leaving it so for other users.
    from ray.data import DataContext

    ctx = DataContext.get_current()
    before = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = before


def read_split_columns(stage: Location, split: str, columns: Sequence[str]) -> pa.Table:
    """A few columns of one split, read on the driver with pyarrow (column projection and
    a row-group filter keep it cheap): for task statistics such as class vocabularies or
    the positive rate, which do not need a Ray Data job."""
    import pyarrow.parquet as pq

    parts = []
    for file in published_files(stage, prefix="data/", suffix=".parquet"):
        with file.open("rb") as fh:
            table = pq.read_table(fh, columns=[*columns, "split"],
                                  filters=[("split", "==", split)])
        parts.append(table.drop_columns(["split"]))
    return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})


def read_split(stage: Location, split: str, columns: Sequence[str], seed: int = 0,
               preprocess: Preprocess | None = None) -> ray.data.Dataset:
    """Lazy Dataset of one split of a published stage: the listed Parquet files only,
    `columns` (or what `preprocess` makes of them) plus an `_order` key (see the module
    docstring)."""
    import ray.data
    from ray.data.expressions import col, lit

    files = published_files(stage, prefix="data/", suffix=".parquet")
    if not files:
        raise ValueError(f"{stage}: the manifest lists no data/*.parquet files")
    fs, root = stage.arrow_filesystem()
    stage_fs = pafs.SubTreeFileSystem(root.rstrip("/"), fs)
    rel = [posixpath.relpath(f.arrow_filesystem()[1], root) for f in files]
    with _ordered_data_context():
        ds = ray.data.read_parquet(rel, filesystem=stage_fs, include_row_hash=True)
        # Projection and the filter below are pushed down into the Parquet scan.
        ds = ds.select_columns([*columns, "split", "row_hash"])
        ds = ds.filter(expr=col("split") == lit(split))
        return ds.map_batches(partial(_normalize_and_key, seed=seed, preprocess=preprocess),
                              batch_format="pyarrow")


@dataclass(frozen=True)
class SplitInputs:
    """The per-run Ray Data inputs of one task, built on the driver."""

    data_digest: str
    world_size: int
    chunks_per_rank: int
    train_rows: int  # rows trained on per epoch, all ranks
    dropped_rows: int
    val_rows: int
    chunks: tuple[ray.data.Dataset, ...]
    val_shards: tuple[ray.data.Dataset, ...]
    #: the same chunks and val shards as Arrow tables, by dataset name, when they were
    #: prepared on the driver (Ray Train's local mode reads them without Ray Data)
    tables: Mapping[str, pa.Table] | None = None

    @property
    def rows_per_rank(self) -> int:
        return self.train_rows // self.world_size

    def batches_per_epoch(self, batch_size: int) -> int:
        return -(-self.rows_per_rank // batch_size)

    def datasets(self) -> dict[str, ray.data.Dataset]:
        """What the TorchTrainer gets (`datasets=`), each streamed unsplit."""
        out = {chunk_name(k): c for k, c in enumerate(self.chunks)}
        out.update({val_name(r): v for r, v in enumerate(self.val_shards)})
        return out


class ArrowShard:
    """An Arrow table in this process, iterated like a Ray Data shard of one block: the
    same consecutive batches, converted by Ray Data's own block accessor. Ray Train's
    local mode trains on these instead of starting a Ray Data execution per chunk and
    epoch in the driver."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy",
                     prefetch_batches: int = 0) -> Iterator[Any]:
        from ray.data.block import BlockAccessor

        for start in range(0, self.table.num_rows, batch_size):
            part = self.table.slice(start, batch_size)
            yield BlockAccessor.for_block(part).to_batch_format(batch_format)


def chunk_name(k: int) -> str:
    return f"train_c{k:03d}"


def val_name(rank: int) -> str:
    return f"val_r{rank:03d}"


def _file_row_hashes(relpath: str, rows: int) -> np.ndarray:
    # Ray Data's `row_hash` (include_row_hash=True): splitmix64 of md5(path)[:8] plus the
    # row's position among the rows the filtered scan of that file returns. Reproduced so
    # that both preparation paths key every row identically; a test compares them.
    import hashlib

    seed = int.from_bytes(hashlib.md5(relpath.encode("utf-8")).digest()[:8], "little")
    with np.errstate(over="ignore"):
        return splitmix64(np.uint64(seed) + np.arange(rows, dtype=np.uint64))


def read_split_table(stage: Location, split: str, columns: Sequence[str], seed: int = 0,
                     preprocess: Preprocess | None = None) -> pa.Table:
    """`read_split` done on the driver with pyarrow, as one Arrow table in the same stored
    order with the same `_order` keys: for splits small enough that a Ray Data job (tasks,
    a distributed sort, a materialization) would cost more than the rows themselves."""
    import pyarrow.parquet as pq

    files = published_files(stage, prefix="data/", suffix=".parquet")
    if not files:
        raise ValueError(f"{stage}: the manifest lists no data/*.parquet files")
    _, root = stage.arrow_filesystem()
    parts = []
    for file in files:
        rel = posixpath.relpath(file.arrow_filesystem()[1], root)
        with file.open("rb") as fh:
            table = pq.read_table(fh, columns=[*columns, "split"],
                                  filters=[("split", "==", split)])
        hashes = _file_row_hashes(rel, table.num_rows)
        parts.append(table.append_column("row_hash", pa.array(hashes, type=pa.uint64())))
    table = pa.concat_tables(parts).combine_chunks()
    return _normalize_and_key(table, seed, preprocess)


#: below this many Parquet bytes (as published, compressed) the splits are prepared on the
#: driver with pyarrow; above it, by Ray Data tasks spread over the cluster
DRIVER_PREPARE_MAX_BYTES = 64 * 1024 * 1024


def _published_bytes(stage: Location) -> int:
    manifest = read_manifest(stage)
    return sum(f.size for f in manifest.files
               if f.path.startswith("data/") and f.path.endswith(".parquet"))


def _prepare_on_driver(stage: Location, columns: Sequence[str], world_size: int,
                       seed: int, chunks_per_rank: int, preprocess: Preprocess | None
                       ) -> tuple[int, int, int, tuple[Any, ...], tuple[Any, ...],
                                  dict[str, pa.Table]]:
    import ray.data

    train = read_split_table(stage, "train", columns, seed, preprocess)
    train = train.take(pc.sort_indices(train, [(_ORDER, "ascending")])).drop_columns(
        [_ORDER])
    val = read_split_table(stage, "val", columns, seed, preprocess).drop_columns([_ORDER])
    n_train, n_val = train.num_rows, val.num_rows
    if n_train < world_size:
        raise ValueError(f"{stage}: {n_train} train rows cannot feed {world_size} workers")
    chunks_per_rank = max(1, min(chunks_per_rank, n_train // world_size))
    n_chunks = world_size * chunks_per_rank
    per_chunk = n_train // n_chunks  # as Dataset.split(equal=True): the tail is dropped
    tables = {chunk_name(k): train.slice(k * per_chunk, per_chunk) for k in range(n_chunks)}
    bounds = [0, *(n_val * r // world_size for r in range(1, world_size)), n_val]
    tables.update({val_name(r): val.slice(a, b - a)
                   for r, (a, b) in enumerate(itertools.pairwise(bounds))})
    chunks = tuple(ray.data.from_arrow(tables[chunk_name(k)]) for k in range(n_chunks))
    val_shards = tuple(ray.data.from_arrow(tables[val_name(r)]) for r in range(world_size))
    return chunks_per_rank, n_train, n_val, chunks, val_shards, tables


def prepare_inputs(stage: Location, columns: Sequence[str], world_size: int, seed: int,
                   chunks_per_rank: int = CHUNKS_PER_RANK,
                   preprocess: Preprocess | None = None,
                   driver_max_bytes: int = DRIVER_PREPARE_MAX_BYTES) -> SplitInputs:
    """Read, key, sort and cut the train/val splits of a stage for `world_size` workers
    (`preprocess`: a task's per-row feature computation, done here once per row).

    Splits whose Parquet files total at most `driver_max_bytes` are prepared on the driver
    (a Ray Data job has seconds of fixed cost); larger ones by Ray Data tasks. Both give
    the same chunks, row for row."""
    digest = read_manifest(stage).content_digest
    if _published_bytes(stage) <= driver_max_bytes:
        chunks_per_rank, n_train, n_val, chunks, val_shards, tables = _prepare_on_driver(
            stage, columns, world_size, seed, chunks_per_rank, preprocess)
        n_chunks = len(chunks)
        kept = (n_train // n_chunks) * n_chunks
        log.info("train split: %d rows in %d chunks of %d (%d dropped to keep ranks "
                 "equal); val split: %d rows over %d workers (prepared on the driver)",
                 n_train, n_chunks, n_train // n_chunks, n_train - kept, n_val, world_size)
        return SplitInputs(digest, world_size, chunks_per_rank, kept, n_train - kept, n_val,
                           chunks, val_shards, tables)
    with _ordered_data_context():
        train = read_split(stage, "train", columns, seed, preprocess)
        train = train.sort(_ORDER).drop_columns([_ORDER]).materialize()
        val = read_split(stage, "val", columns, seed, preprocess)
        val = val.drop_columns([_ORDER]).materialize()
        n_train, n_val = train.count(), val.count()
        if n_train < world_size:
            raise ValueError(f"{stage}: {n_train} train rows cannot feed {world_size} "
                             f"workers")
        chunks_per_rank = max(1, min(chunks_per_rank, n_train // world_size))
        n_chunks = world_size * chunks_per_rank
        chunks = tuple(train.split(n_chunks, equal=True))
        kept = (n_train // n_chunks) * n_chunks
        bounds = [n_val * r // world_size for r in range(1, world_size)]
        val_shards = tuple(val.split_at_indices(bounds)) if bounds else (val,)
    log.info("train split: %d rows in %d chunks of %d (%d dropped to keep ranks equal); "
             "val split: %d rows over %d workers", n_train, n_chunks, n_train // n_chunks,
             n_train - kept, n_val, world_size)
    return SplitInputs(digest, world_size, chunks_per_rank, kept, n_train - kept, n_val,
                       chunks, val_shards)


# --- worker side ------------------------------------------------------------------------

def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(w) & 0xFFFFFFFF for w in words]))


def epoch_chunks(seed: int, epoch: int, n_chunks: int, world_size: int, rank: int
                 ) -> list[int]:
    """The chunks rank `rank` streams in epoch `epoch`, in order."""
    per_rank = n_chunks // world_size
    order = _rng(seed, epoch, 0x5EED).permutation(n_chunks)
    return [int(k) for k in order[rank * per_rank:(rank + 1) * per_rank]]


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(batch: Mapping[str, np.ndarray], idx: Any) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in batch.items()}


def _windows(streams: Iterable[Iterable[Mapping[str, np.ndarray]]], rows: int
             ) -> Iterator[dict[str, np.ndarray]]:
    """Re-cut a sequence of batch streams into windows of exactly `rows` rows (the last
    one shorter), independent of how the streams were blocked."""
    parts: list[dict[str, np.ndarray]] = []
    have = 0
    for stream in streams:
        for batch in stream:
            parts.append(dict(batch))
            have += len(next(iter(batch.values())))
            while have >= rows:
                joined = _concat(parts)
                yield _take(joined, slice(0, rows))
                rest = _take(joined, slice(rows, None))
                have -= rows
                parts = [rest] if have else []
    if have:
        yield _concat(parts)


def epoch_batches(iterators: Sequence[Any], batch_size: int, seed: int, epoch: int,
                  rank: int, start_batch: int = 0,
                  window_batches: int = SHUFFLE_WINDOW_BATCHES
                  ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(batch index in the epoch, numpy batch) for rank `rank`, from `start_batch` on.

    `iterators` are the DataIterators of this rank's chunks for this epoch, in order."""
    window_rows = batch_size * window_batches
    streams = (it.iter_batches(batch_size=window_rows, batch_format="numpy",
                               prefetch_batches=1) for it in iterators)
    index = 0
    for w, window in enumerate(_windows(streams, window_rows)):
        n = len(next(iter(window.values())))
        n_batches = -(-n // batch_size)
        if index + n_batches <= start_batch:  # consumed before the checkpoint
            index += n_batches
            continue
        perm = _rng(seed, epoch, rank, w, 0xB47C).permutation(n)
        for b in range(n_batches):
            if index >= start_batch:
                yield index, _take(window, perm[b * batch_size:(b + 1) * batch_size])
            index += 1


def eval_batches(iterator: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """The rows of a val shard in stored order."""
    yield from iterator.iter_batches(batch_size=batch_size, batch_format="numpy",
                                     prefetch_batches=1)


def publish_split_table(stage: Location, table: pa.Table, n_files: int = 2,
                        stage_name: str = "dedup") -> str:
    """Publish `table` as a split stage (data/part-*.parquet + manifest) at `stage`;
    returns its content digest. For tests, benchmarks and smoke runs that need a stage
    without Spark (any store: the Location carries its options)."""
    import pyarrow.parquet as pq

    from pipeline.storage import StageWriter

    writer = StageWriter(stage, stage_name)
    bounds = np.linspace(0, table.num_rows, n_files + 1).astype(int)
    for i in range(n_files):
        part = table.slice(bounds[i], bounds[i + 1] - bounds[i])
        with (writer.staging / "data" / f"part-{i:05d}.parquet").open("wb") as fh:
            pq.write_table(part, fh)
    counts = pc.value_counts(table.column("split")).to_pylist()
    # The row counts a dedup stage publishes (`split.<name>`, `kept`), which the train
    # stage checks before training.
    row_counts = {f"split.{d['values']}": d["counts"] for d in counts}
    row_counts["kept"] = table.num_rows
    manifest = writer.publish(row_counts=row_counts)
    return manifest.content_digest
