"""The generic loop's parts: schedule, optimizer, guards, deterministic data order, DDP."""

from __future__ import annotations

import itertools
import math
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import config_from_dict
from pipeline.train import data
from pipeline.train.loop import (
    FaultSpec,
    NonFiniteLossError,
    SumAccumulator,
    WarmupCosine,
    make_optimizer,
    optimizer_step,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_warmup_then_cosine() -> None:
    f = WarmupCosine(warmup=4, total=20)
    assert f(0) == pytest.approx(1 / 5) and f(3) == pytest.approx(4 / 5)
    assert f(4) == pytest.approx(1.0)
    assert f(12) == pytest.approx(0.5)
    assert f(20) == pytest.approx(0.0, abs=1e-12) and f(99) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(4, 25))


@pytest.mark.unit
def test_weight_decay_only_on_matrices() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1))
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and all(p.ndim == 2 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])


class _LinearTask:
    """A minimal Task: mean squared error of a linear model; poison makes the loss NaN."""

    name = "toy"
    columns = ("x", "y")

    def build_model(self) -> nn.Module:
        return nn.Linear(2, 1)

    def to_tensors(self, batch: Any, train: bool, generator: Any = None) -> dict[str, Any]:
        return {"x": torch.as_tensor(batch["x"]), "y": torch.as_tensor(batch["y"])}

    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        err = (model(batch["x"]).squeeze(1) - batch["y"]) ** 2
        return err.mean(), {"loss_sum": err.sum().detach(),
                            "count": torch.tensor(float(len(err)))}

    def summarize(self, sums: Any) -> dict[str, float]:
        return {"loss": sums["loss_sum"] / sums["count"]}


@pytest.mark.unit
def test_non_finite_loss_stops_before_the_optimizer_step() -> None:
    torch.manual_seed(0)
    task = _LinearTask()
    model = task.build_model()
    opt = make_optimizer(model, 0.1, 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    good = {"x": torch.ones(4, 2), "y": torch.zeros(4)}
    bad = {"x": torch.full((4, 2), math.nan), "y": torch.zeros(4)}
    with pytest.raises(NonFiniteLossError, match=r"step 8: batch 15 of epoch 2"):
        optimizer_step(model, task, opt, None, [good, bad], 1.0, torch.device("cpu"),
                       step=7, first_batch=14, epoch=2)
    for p, q in zip(model.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q)


@pytest.mark.unit
def test_sum_accumulator_adds_stacked_sums() -> None:
    acc = SumAccumulator(torch.device("cpu"))
    acc.add({"a": torch.tensor(1.0), "b": torch.tensor(2.0)})
    acc.add({"a": torch.tensor(0.5), "b": torch.tensor(1.0), "c": torch.tensor(3.0)})
    assert acc.reduced() == {"a": 1.5, "b": 3.0, "c": 3.0}


@pytest.mark.unit
def test_fault_spec_from_env(tmp_path: Path) -> None:
    assert FaultSpec.from_env({}) is None
    spec = FaultSpec.from_env({"PIPELINE_TRAIN_FAULT": f"raise:6:1:{tmp_path}/m"})
    assert spec == FaultSpec("raise", 6, f"{tmp_path}/m", 1)
    spec.maybe_fire(6, 0)  # other rank: nothing
    with pytest.raises(RuntimeError, match="injected failure at step 6"):
        spec.maybe_fire(6, 1)
    spec.maybe_fire(6, 1)  # the marker exists now: fires once
    with pytest.raises(ValueError, match="MODE:STEP:RANK:MARKER_PATH"):
        FaultSpec.from_env({"PIPELINE_TRAIN_FAULT": "raise"})


class _FakeIterator:
    """Stands in for a DataIterator: yields a column dict in blocks of a given size."""

    def __init__(self, ids: np.ndarray, block: int) -> None:
        self.ids, self.block = ids, block

    def iter_batches(self, **_: Any) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.ids), self.block):
            yield {"id": self.ids[i:i + self.block]}


def _flat(batches: list[list[Any]]) -> list[Any]:
    return list(itertools.chain.from_iterable(batches))


def _ids(batches: Any) -> list[list[int]]:
    return [b["id"].tolist() for _, b in batches]


@pytest.mark.unit
def test_epoch_order_is_deterministic_and_resumable() -> None:
    chunks = [np.arange(k * 50, (k + 1) * 50) for k in range(3)]

    def run(epoch: int, start: int = 0, block: int = 7) -> list[list[int]]:
        its = [_FakeIterator(c, block) for c in chunks]
        return _ids(data.epoch_batches(its, batch_size=8, seed=1, epoch=epoch, rank=0,
                                       start_batch=start, window_batches=4))

    full = run(0)
    assert len(full) == 19 and sorted(_flat(full)) == list(range(150))
    assert run(0, block=50) == full  # whatever the block layout
    assert run(0, start=11) == full[11:]  # resuming mid-epoch replays the same batches
    assert run(1) != full and sorted(_flat(run(1))) == list(range(150))
    chunks_of = [data.epoch_chunks(seed=1, epoch=e, n_chunks=8, world_size=2, rank=r)
                 for e in range(3) for r in range(2)]
    for e in range(3):
        assert sorted(chunks_of[2 * e] + chunks_of[2 * e + 1]) == list(range(8))
    assert chunks_of[0] != chunks_of[2]  # ranks get other chunks in another epoch


_DDP_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from pipeline.config import TransactionTaskConfig
    from pipeline.train.data import numpy_friendly
    from pipeline.train.loop import make_optimizer, optimizer_step, seed_all, unwrap
    from pipeline.train.tasks.transactions import FraudTask, synthetic_transactions

    rank, world, micro, port, out = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]),
                                     sys.argv[4], sys.argv[5])
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    task = FraudTask(TransactionTaskConfig(hidden=16), pos_weight=3.0, dropout=0.0)
    table = numpy_friendly(synthetic_transactions(64, 3, fraud_rate=0.3))
    batch = {c: table.column(c).to_numpy(zero_copy_only=False) for c in FraudTask.columns}
    seed_all(0)
    model = task.build_model()
    if world > 1:
        model = DistributedDataParallel(model)
    opt = make_optimizer(model, 1e-2, 0.01)
    rows = np.arange(64).reshape(world, -1)[rank]
    mbs = [task.to_tensors({k: v[m] for k, v in batch.items()}, True)
           for m in np.array_split(rows, micro)]
    optimizer_step(model, task, opt, None, mbs, 1.0, torch.device("cpu"), step=0)
    if rank == 0:
        torch.save(unwrap(model).state_dict(), out)
    if world > 1:
        dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.unit
def test_one_step_on_two_workers_equals_one_step_on_the_whole_batch(tmp_path: Path) -> None:
    script = tmp_path / "ddp_step.py"
    script.write_text(_DDP_SCRIPT)
    port = str(_free_port())
    # 2 gloo workers, each on half of the global batch in 2 accumulated micro-batches...
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", "2", port,
                               str(tmp_path / "ddp.pt")], cwd=REPO) for r in range(2)]
    # ...against 1 process on all 64 rows in one micro-batch.
    single = subprocess.run([sys.executable, str(script), "0", "1", "1", port,
                             str(tmp_path / "single.pt")], cwd=REPO, timeout=120)
    assert [p.wait(timeout=120) for p in procs] == [0, 0] and single.returncode == 0
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    one = torch.load(tmp_path / "single.pt", weights_only=True)
    assert ddp.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.integration
def test_ray_data_shards_are_deterministic_disjoint_and_complete(
        ray_local: Any, tmp_path: Path) -> None:
    from pipeline.storage import Location
    from pipeline.train.tasks.transactions import synthetic_transactions

    stage = Location(f"file://{tmp_path}/dedup")
    table = synthetic_transactions(600, seed=2)
    data.publish_split_table(stage, table, n_files=3)
    columns = ("txn_id", "amount", "ts")
    first = data.prepare_inputs(stage, columns, world_size=2, seed=5)
    again = data.prepare_inputs(stage, columns, world_size=2, seed=5)
    n_train = int(np.sum(table.column("split").to_numpy(zero_copy_only=False) == "train"))
    assert first.train_rows + first.dropped_rows == n_train
    assert first.dropped_rows < len(first.chunks)
    assert first.val_rows == len(table) - n_train
    assert sum(v.count() for v in first.val_shards) == first.val_rows

    def epoch(inputs: data.SplitInputs, e: int, rank: int) -> list[list[str]]:
        order = data.epoch_chunks(5, e, len(inputs.chunks), 2, rank)
        its = [inputs.chunks[k].iterator() for k in order]
        return [b["txn_id"].tolist() for _, b in data.epoch_batches(its, 16, 5, e, rank)]

    r0, r1 = epoch(first, 0, 0), epoch(first, 0, 1)
    assert r0 == epoch(again, 0, 0) and r1 == epoch(again, 0, 1)
    assert len(r0) == len(r1) == first.batches_per_epoch(16)
    seen = _flat(r0) + _flat(r1)
    assert len(seen) == len(set(seen)) == first.train_rows  # disjoint ranks, every row
    assert epoch(first, 1, 0) != r0


@pytest.mark.integration
def test_driver_and_ray_data_preparation_give_the_same_chunks(ray_local: Any,
                                                              tmp_path: Path) -> None:
    # Small splits are prepared on the driver, large ones by Ray Data tasks: the same
    # stage must give the same chunks and val shards, row for row, either way (this also
    # pins the reproduction of Ray Data's row_hash the driver path relies on).
    from pipeline.storage import Location
    from pipeline.train.tasks.transactions import FraudTask, synthetic_transactions

    stage = Location(f"file://{tmp_path}/dedup")
    data.publish_split_table(stage, synthetic_transactions(500, seed=3), n_files=3)
    task = FraudTask(config_from_dict({}).train.transactions)
    # One Ray Data preparation only (it has the fixed cost the driver path avoids).
    small = data.prepare_inputs(stage, task.columns, world_size=2, seed=7,
                                preprocess=task.preprocess)
    large = data.prepare_inputs(stage, task.columns, world_size=2, seed=7,
                                preprocess=task.preprocess, driver_max_bytes=0)
    assert (small.train_rows, small.dropped_rows, small.val_rows) == (
        large.train_rows, large.dropped_rows, large.val_rows)
    assert len(small.chunks) == len(large.chunks) == 8
    for a, b in zip((*small.chunks, *small.val_shards),
                    (*large.chunks, *large.val_shards), strict=True):
        assert _rows(a) == _rows(b)


def _rows(ds: Any) -> list[dict[str, Any]]:
    import pyarrow as pa
    import ray

    table = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    return table.to_pylist()
