"""Training benchmarks, side by side, on synthetic fraud data (one run, a table of ratios).

1. the generic loop under Ray Train (1 CPU worker) vs a plain PyTorch loop in one process
   (same model, data, batch size, 1 torch thread each; features computed once up front in
   both: by the task's `preprocess` in the Ray Data read, and in memory for plain):
   samples/s ratio (goal >= 0.975),
   plus the seconds Ray spends before and around training;
2. 2 CPU workers vs 1 on the same model (per-worker batch fixed): samples/s ratio
   (goal >= 1.5x; needs 2 idle cores);
3. the Ray Data Parquet feed (preprocessed deterministic shards, shuffle windows,
   per-batch `to_tensors`) vs tensors held in memory, both in a plain loop: ratio
   (goal >= 0.9).

    .venv/bin/python bench/train.py [--rows 40000 --hidden 512 --batch 256 --epochs 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pyarrow.compute as pc
import torch

from pipeline.config import PipelineConfig, RayConfig, config_from_dict
from pipeline.ray_env import init_ray
from pipeline.storage import Location, RunPaths
from pipeline.train import data
from pipeline.train.loop import make_optimizer, make_scheduler
from pipeline.train.tasks.transactions import (
    FraudTask,
    pos_weight_for,
    synthetic_transactions,
)
from pipeline.train.trainer import TrainResult, train_task

Batch = Mapping[str, torch.Tensor]


def _cfg(root: str, args: argparse.Namespace, workers: int) -> PipelineConfig:
    return config_from_dict({
        "ray": {"num_cpus": 2}, "storage": {"root": f"file://{root}"},
        "train": {"epochs": args.epochs, "warmup_steps": 10, "checkpoint_every_steps": 10**6,
                  "log_every_steps": 10**6, "scaling": {"num_workers": workers},
                  "transactions": {"batch_size": args.batch, "hidden": args.hidden}}})


def _plain_epochs(task: FraudTask, batches: Callable[[int], Iterator[Batch]], epochs: int,
                  steps_per_epoch: int) -> float:
    """A plain PyTorch loop (what one writes without Ray); samples/s of its best epoch."""
    torch.manual_seed(0)
    model = task.build_model()
    opt = make_optimizer(model, task.cfg.lr, 0.01)
    sched = make_scheduler(opt, 10, epochs * steps_per_epoch)
    rate = 0.0
    for epoch in range(epochs):
        model.train()
        rows, started = 0, time.perf_counter()
        for batch in batches(epoch):
            loss, _ = task.loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            rows += len(batch["target"])
        rate = max(rate, rows / (time.perf_counter() - started))
    return rate


def _in_memory(table: Any, task: FraudTask, batch: int) -> Callable[[int], Iterator[Batch]]:
    """Features converted once; each epoch a fresh permutation, batches by indexing."""
    cols = {c: table.column(c).to_numpy(zero_copy_only=False) for c in FraudTask.columns}
    n = table.num_rows
    tensors = task.to_tensors(cols, train=True)

    def batches(epoch: int) -> Iterator[Batch]:
        perm = torch.from_numpy(np.random.default_rng(epoch).permutation(n))
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            yield {k: v[idx] for k, v in tensors.items()}
    return batches


def _ray_feed(inputs: data.SplitInputs, task: FraudTask, batch: int
              ) -> Callable[[int], Iterator[Batch]]:
    iterators = [c.iterator() for c in inputs.chunks]

    def batches(epoch: int) -> Iterator[Batch]:
        order = data.epoch_chunks(0, epoch, len(iterators), 1, 0)
        for _, b in data.epoch_batches([iterators[k] for k in order], batch, 0, epoch, 0):
            yield task.to_tensors(b, train=True)
    return batches


def _train_rate(result: TrainResult) -> float:
    return max(float(h["samples_per_s"]) for h in result.history)


def _train_seconds(result: TrainResult, rows: int) -> float:
    return sum(rows / float(h["samples_per_s"]) for h in result.history)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=40_000)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)  # as each 1-CPU Ray worker gets (OMP_NUM_THREADS=1)
    root = tempfile.mkdtemp(prefix="bench-train-")
    table = synthetic_transactions(args.rows, seed=0, fraud_rate=0.1)
    store = Location(f"file://{root}")
    run1, run2 = RunPaths(store, "w1"), RunPaths(store, "w2")
    for run in (run1, run2):
        data.publish_split_table(run.stage("dedup/transactions"), table, n_files=4)
    train = data.numpy_friendly(table.filter(pc.equal(table.column("split"), "train")))
    rate = float(np.mean(train.column("is_fraud").to_numpy(zero_copy_only=False)))
    task = FraudTask(_cfg(root, args, 1).train.transactions, pos_weight_for(rate))
    steps = -(-train.num_rows // args.batch)

    started = time.perf_counter()
    init_ray(RayConfig(num_cpus=2))
    init_seconds = time.perf_counter() - started
    plain = _plain_epochs(task, _in_memory(train, task, args.batch), args.epochs, steps)
    one = train_task(_cfg(root, args, 1), "transactions", run1.stage("dedup/transactions"),
                     run1)
    two = train_task(_cfg(root, args, 2), "transactions", run2.stage("dedup/transactions"),
                     run2)
    stage1 = run1.stage("dedup/transactions")
    started = time.perf_counter()
    inputs = data.prepare_inputs(stage1, FraudTask.columns, 1, 0, preprocess=task.preprocess)
    driver_prepare = time.perf_counter() - started
    started = time.perf_counter()  # the baseline: the same chunks through Ray Data tasks
    data.prepare_inputs(stage1, FraudTask.columns, 1, 0, preprocess=task.preprocess,
                        driver_max_bytes=0)
    ray_data_prepare = time.perf_counter() - started
    # The baseline again, after the Ray runs: the better of the two (load varies).
    plain = max(plain, _plain_epochs(task, _in_memory(train, task, args.batch),
                                     args.epochs, steps))
    feed = _plain_epochs(task, _ray_feed(inputs, task, args.batch), args.epochs, steps)

    ray_rate, rows1 = _train_rate(one), inputs.train_rows
    overhead = one.fit_seconds - _train_seconds(one, rows1)
    import ray

    print(f"\ncores {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; python "
          f"{platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}")
    print(f"{args.rows:,} rows ({train.num_rows:,} train), fraud MLP hidden {args.hidden} "
          f"({sum(p.numel() for p in task.build_model().parameters()):,} parameters), "
          f"batch {args.batch} per worker, {args.epochs} epochs, 1 torch thread per process; "
          f"figures are samples/s of the best epoch (the machine is shared: best-of damps "
          f"other load)")
    rows = [
        ("Ray Train loop, 1 worker vs plain PyTorch", ray_rate, plain, 0.975),
        ("Ray Train, 2 workers vs 1 worker", _train_rate(two), ray_rate, 1.5),
        ("Ray Data Parquet feed vs in-memory tensors", feed, plain, 0.9),
    ]
    print(f"\n{'comparison':<46}{'samples/s':>12}{'baseline':>12}{'ratio':>8}{'goal':>8}")
    for name, value, base, goal in rows:
        ratio = value / base
        flag = "ok" if ratio >= goal else "below"
        print(f"{name:<46}{value:>12,.0f}{base:>12,.0f}{ratio:>8.3f}{goal:>7.3g} {flag}")
    print(f"\ndata preparation (same chunks): on the driver {driver_prepare:.2f} s, through "
          f"Ray Data tasks {ray_data_prepare:.2f} s (ratio "
          f"{ray_data_prepare / max(driver_prepare, 1e-9):.1f}x; the driver path serves "
          f"splits up to {data.DRIVER_PREPARE_MAX_BYTES >> 20} MiB of Parquet)")
    print(f"\nRay setup: ray.init {init_seconds:.1f} s; driver data preparation "
          f"{one.prepare_seconds:.1f} s; TorchTrainer.fit {one.fit_seconds:.1f} s of which "
          f"{overhead:.1f} s outside the training epochs (worker start, process group, "
          f"validation, checkpoints)")


if __name__ == "__main__":
    main()
