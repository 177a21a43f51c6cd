"""The generic per-worker training function run by Ray Train's TorchTrainer.

A task (pipeline.train.task.Task) supplies the model, the batch conversion, the loss and
the metrics; this module owns the rest: DDP (`ray.train.torch.prepare_model`), device
and bf16 autocast (CUDA only), AdamW with weight decay on matrices only, linear warmup then
cosine decay (LambdaLR), gradient accumulation with DDP `no_sync` on the non-final
micro-steps, gradient clipping, a non-finite-loss guard before each optimizer step,
validation every epoch (metric sums all-reduced, then `task.summarize`), logging with
throughput, checkpoints (every `checkpoint_every_steps` optimizer steps and at each epoch
end; rank 0 writes, every rank reports) and exact resumption.

Ray Train's local mode (`num_workers=0`) runs this function once, in the driver process,
as rank 0 of 1. Ray Train then keeps reported checkpoints in memory only, so the loop
writes them itself (`LoopSpec.local_checkpoints`), with the retention Ray Train applies
(`checkpoint.retired`); the checkpoint folders are the same either way.

Seeding: every rank seeds torch with `seed` before `build_model`, so all start from the
same weights; afterwards the global RNGs (dropout) and the augmentation generator are
seeded with `seed + rank`. Their states are gathered into every checkpoint, so a resumed
run draws the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import posixpath
import random
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.storage import Location
from pipeline.train import UNVALIDATED_LOSS, data
from pipeline.train import checkpoint as ckpt
from pipeline.train.faults import FAULT_ENV, FaultSpec, InjectedFault
from pipeline.train.metrics import SumAccumulator, distributed, gather_objects
from pipeline.train.optim import WarmupCosine, make_optimizer, make_scheduler
from pipeline.train.task import Task

# Re-exported: tests and the trainer import these from here.
__all__ = ["FAULT_ENV", "UNVALIDATED_LOSS", "FaultSpec", "InjectedFault", "LoopSpec",
           "NonFiniteLossError", "SumAccumulator", "WarmupCosine", "gather_objects",
           "make_optimizer", "make_scheduler", "train_loop_per_worker"]

log = logging.getLogger("pipeline.train")


class NonFiniteLossError(FloatingPointError):
    """A loss was NaN or infinite; the optimizer step was not taken."""


@dataclass(frozen=True)
class LocalCheckpoints:
    """Where the loop writes checkpoints itself in Ray Train's local mode (Ray Train's
    experiment folder), and how many it keeps besides the newest (`train.keep_best`)."""

    root: Location
    keep_best: int

    def commit(self, local_dir: str, name: str) -> None:
        """Write the checkpoint folder `local_dir` as `<root>/<name>` (checkpoint.json
        last), then delete those that Ray Train's retention would."""
        arrow_fs, root = self.root.arrow_filesystem()
        ckpt.replace_checkpoint(local_dir, arrow_fs, posixpath.join(root, name))
        fs, path = self.root.filesystem()
        for gone in ckpt.retired(ckpt.list_checkpoints(fs, path), self.keep_best):
            fs.rm(gone, recursive=True)


@dataclass(frozen=True)
class LoopSpec:
    """Everything a worker needs, built by the driver (pickled to the workers)."""

    task: Any  # a pipeline.train.task.Task, with any driver-side statistics applied
    modality: str
    epochs: int
    seed: int
    lr: float
    weight_decay: float
    warmup_steps: int
    grad_accum_steps: int
    grad_clip: float
    checkpoint_every_steps: int
    log_every_steps: int
    batch_size: int
    n_chunks: int
    batches_per_epoch: int
    config_digest: str
    data_digest: str
    resume_config: Mapping[str, Any] = field(default_factory=dict)
    task_state: Mapping[str, Any] = field(default_factory=dict)
    resume_from: Location | None = None  # the newest complete checkpoint the driver saw
    fault: FaultSpec | None = None
    window_batches: int = data.SHUFFLE_WINDOW_BATCHES
    threads: int = 1  # torch intra-op threads per worker (= its CPUs)
    #: set in Ray Train's local mode (the loop runs in the driver), None on workers
    local_checkpoints: LocalCheckpoints | None = None
    #: the device in local mode ("cpu"/"cuda"); None: Ray Train's device for the worker
    device: str | None = None
    #: local mode with splits prepared on the driver: the chunks and val shards by name
    local_tables: Mapping[str, Any] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.batches_per_epoch // self.grad_accum_steps)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slow and lossy)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: Mapping[str, torch.Tensor], device: torch.device
              ) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def optimizer_step(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None,
                   micro_batches: Sequence[Mapping[str, torch.Tensor]], grad_clip: float,
                   device: torch.device, step: int, first_batch: int = 0,
                   epoch: int = 0) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """One optimizer step over gradient-accumulated micro-batches (DDP syncs only on the
    last); raises NonFiniteLossError, before stepping, if any rank saw a bad loss.

    Returns each micro-batch's detached loss and metric sums."""
    n = len(micro_batches)
    losses: list[torch.Tensor] = []
    all_sums: list[dict[str, torch.Tensor]] = []
    ddp = isinstance(model, DistributedDataParallel)
    for i, batch in enumerate(micro_batches):
        sync: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if (not ddp or i == n - 1)
            else model.no_sync())  # type: ignore[operator]
        with sync:
            with autocast_for(device):
                loss, sums = task.loss(model, batch)
            (loss.float() / n).backward()
        losses.append(loss.detach().float())
        all_sums.append(sums)
    bad = (~torch.isfinite(torch.stack(losses))).to(torch.float32)
    flag = bad.sum().reshape(1)
    if distributed():
        dist.all_reduce(flag)
    if float(flag.item()) > 0:
        local = torch.nonzero(bad).flatten().tolist()
        rank = dist.get_rank() if distributed() else 0
        where = (f"batch {first_batch + local[0]} of epoch {epoch} on rank {rank} "
                 f"(loss {float(losses[local[0]])})" if local else "another rank's batch")
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {step + 1}: {where}; the optimizer step was "
            f"not taken. Lower the learning rate (now {optimizer.param_groups[0]['lr']:.3g}) "
            f"or check the input data.")
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return losses, all_sums


def _rows(batch: Mapping[str, torch.Tensor]) -> int:
    return int(next(iter(batch.values())).shape[0])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Worker:
    """State and steps of one training worker."""

    def __init__(self, spec: LoopSpec) -> None:
        import ray.train
        import ray.train.torch

        self.spec = spec
        self.task: Task = spec.task
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = (torch.device(spec.device) if spec.device is not None
                       else ray.train.torch.get_device())
        torch.set_num_threads(spec.threads)  # as many as the worker reserved CPUs
        seed_all(spec.seed)  # identical initial weights on every rank
        model = self.task.build_model()
        seed_all(spec.seed + self.rank)  # then different dropout/augmentation per rank
        self.generator = torch.Generator().manual_seed(spec.seed + self.rank)
        self.raw_model = model.to(self.device)
        self.optimizer = make_optimizer(self.raw_model, spec.lr, spec.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, spec.warmup_steps, spec.total_steps)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history: list[dict[str, float]] = []
        self.train_sums = SumAccumulator(self.device)
        resumed = self._restore()
        self.model = ray.train.torch.prepare_model(self.raw_model, move_to_device=False)
        self.chunks: list[Any]
        if spec.local_tables is not None:  # local mode, data prepared here: no Ray Data
            self.chunks = [data.ArrowShard(spec.local_tables[data.chunk_name(k)])
                           for k in range(spec.n_chunks)]
            self.val: Any = data.ArrowShard(spec.local_tables[data.val_name(self.rank)])
        else:
            self.chunks = [ray.train.get_dataset_shard(data.chunk_name(k))
                           for k in range(spec.n_chunks)]
            self.val = ray.train.get_dataset_shard(data.val_name(self.rank))
        if self.rank == 0:
            where = (f"resumed from {resumed} at step {self.step} (epoch {self.epoch}, batch "
                     f"{self.batch_in_epoch})" if resumed else "starting from scratch")
            log.info("%s: %d worker(s) on %s (%d torch thread(s) each), %d epochs of %d "
                     "optimizer steps (%d batches of %d per worker, gradient accumulation "
                     "%d); %s", spec.modality, self.world, self.device,
                     torch.get_num_threads(), spec.epochs, spec.steps_per_epoch,
                     spec.batches_per_epoch, spec.batch_size, spec.grad_accum_steps, where)

    # --- checkpoints -----------------------------------------------------------------
    def _candidates(self) -> Iterator[tuple[str, Callable[[], ckpt.LoadedCheckpoint]]]:
        import ray.train
        from fsspec.implementations.local import LocalFileSystem

        reported = ray.train.get_checkpoint()
        if reported is not None:
            def from_ray() -> ckpt.LoadedCheckpoint:
                with reported.as_directory() as local:
                    return ckpt.load_checkpoint(LocalFileSystem(), local)
            yield f"Ray Train's latest checkpoint {reported.path}", from_ray
        if self.spec.resume_from is not None:
            fs, path = self.spec.resume_from.filesystem()
            yield self.spec.resume_from.url, lambda: ckpt.load_checkpoint(fs, path)

    def _restore(self) -> str | None:
        best: tuple[str, ckpt.LoadedCheckpoint] | None = None
        for name, load in self._candidates():
            try:
                loaded = load()
            except (ckpt.CheckpointError, FileNotFoundError) as exc:
                log.warning("not resuming from %s: %s", name, exc)
                continue
            if best is None or loaded.meta.step > best[1].meta.step:
                best = (name, loaded)
        if best is None:
            return None
        name, loaded = best
        meta = loaded.meta
        ckpt.check_resumable(meta, name, self.spec.config_digest, self.spec.data_digest,
                             self.spec.resume_config)
        self.raw_model.load_state_dict(loaded.model_state)
        state = loaded.train_state
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        rng = state["rng"]
        ckpt.restore_rng(rng[self.rank] if self.rank < len(rng) else rng[0], self.generator)
        if self.rank == 0 and state.get("epoch_sums"):
            self.train_sums.load({k: float(v) for k, v in state["epoch_sums"].items()})
        self.step, self.epoch, self.batch_in_epoch = meta.step, meta.epoch, meta.batch_in_epoch
        self.history = [dict(h) for h in meta.history]
        return name

    def _save(self, metrics: dict[str, float], epoch_sums: Mapping[str, float]) -> None:
        """Gather RNG states, write the checkpoint on rank 0, report it (every rank)."""
        import ray.train

        rngs = gather_objects(ckpt.capture_rng(self.generator))
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        meta = ckpt.CheckpointMeta(
            task=self.spec.modality, step=self.step, epoch=self.epoch,
            batch_in_epoch=self.batch_in_epoch, world_size=self.world,
            config_digest=self.spec.config_digest, data_digest=self.spec.data_digest,
            metrics=metrics, history=tuple(self.history), resume_config=self.spec.resume_config,
            task_state=self.spec.task_state)
        model_state = {k: v.detach().cpu() for k, v in unwrap(self.model).state_dict().items()}
        train_state = {"optimizer": self.optimizer.state_dict(),
                       "scheduler": self.scheduler.state_dict(), "rng": rngs,
                       "epoch_sums": dict(epoch_sums)}
        name = f"checkpoint_{self.step:08d}"
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            ckpt.write_checkpoint(tmp, model_state, train_state, meta)
            if self.spec.local_checkpoints is not None:
                self.spec.local_checkpoints.commit(tmp, name)
                ray.train.report(metrics)  # local mode keeps the metrics, not the folder
            else:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=name, checkpoint_upload_fn=_upload)
        log.info("checkpoint at step %d (epoch %d, batch %d) saved", self.step, self.epoch,
                 self.batch_in_epoch)

    # --- training --------------------------------------------------------------------
    def _micro_groups(self) -> Iterator[tuple[int, list[dict[str, torch.Tensor]]]]:
        """Groups of up to grad_accum_steps converted batches: (first batch index, group)."""
        spec = self.spec
        order = data.epoch_chunks(spec.seed, self.epoch, spec.n_chunks, self.world, self.rank)
        batches = data.epoch_batches([self.chunks[k] for k in order], spec.batch_size,
                                     spec.seed, self.epoch, self.rank, self.batch_in_epoch,
                                     spec.window_batches)
        group: list[dict[str, torch.Tensor]] = []
        first = self.batch_in_epoch
        for index, batch in batches:
            if not group:
                first = index
            tensors = self.task.to_tensors(batch, train=True, generator=self.generator)
            group.append(to_device(tensors, self.device))
            if len(group) == spec.grad_accum_steps:
                yield first, group
                group = []
        if group:
            yield first, group

    def _log_progress(self, window: torch.Tensor, started: float) -> None:
        if distributed():
            dist.all_reduce(window)
        loss_sum, rows = window.tolist()
        if self.rank == 0 and rows:
            elapsed = max(time.perf_counter() - started, 1e-9)
            log.info("epoch %d/%d, step %d of %d: train loss %.4f (mean over the last %d "
                     "steps, all workers), lr %.2e, %s samples/s (%d rows in %.2f s on %d "
                     "worker(s))", self.epoch + 1, self.spec.epochs, self.step,
                     self.spec.total_steps, loss_sum / rows, self.spec.log_every_steps,
                     self.optimizer.param_groups[0]["lr"], f"{rows / elapsed:,.0f}",
                     int(rows), elapsed, self.world)

    def _train_epoch(self) -> tuple[dict[str, float], dict[str, float]]:
        """Train to the end of the epoch; returns the train sums (all ranks) and timings:
        samples/s (all ranks), seconds, and seconds this rank waited for input batches
        (reading, shuffling and `to_tensors`), which tells an input-bound run apart."""
        spec, model = self.spec, self.model
        model.train()
        window = torch.zeros(2, dtype=torch.float64, device=self.device)
        started = epoch_started = time.perf_counter()
        rows_done, waited = 0, 0.0
        groups = self._micro_groups()
        while True:
            asked = time.perf_counter()
            item = next(groups, None)
            waited += time.perf_counter() - asked
            if item is None:
                break
            first, group = item
            if spec.fault is not None:
                spec.fault.maybe_fire(self.step, self.rank)
            losses, sums = optimizer_step(model, self.task, self.optimizer, self.scheduler,
                                          group, spec.grad_clip, self.device, self.step,
                                          first, self.epoch)
            self.step += 1
            self.batch_in_epoch = first + len(group)
            for loss, batch, s in zip(losses, group, sums, strict=True):
                n = _rows(batch)
                window += torch.stack([loss.double() * n, torch.tensor(
                    float(n), dtype=torch.float64, device=self.device)])
                rows_done += n
                self.train_sums.add(s)
            if self.step % spec.log_every_steps == 0:
                self._log_progress(window, started)
                window.zero_()
                started = time.perf_counter()
            if (self.step % spec.checkpoint_every_steps == 0
                    and self.batch_in_epoch < spec.batches_per_epoch):
                partial = self.train_sums.reduced()
                self._save(self._metrics(partial, None), partial)
        seconds = max(time.perf_counter() - epoch_started, 1e-9)
        timings = {"samples_per_s": rows_done * self.world / seconds, "epoch_seconds": seconds,
                   "input_wait_seconds": waited}
        return self.train_sums.reduced(), timings

    @torch.no_grad()
    def _validate(self) -> dict[str, float]:
        self.model.eval()
        acc = SumAccumulator(self.device)
        for batch in data.eval_batches(self.val, self.spec.batch_size):
            tensors = to_device(self.task.to_tensors(batch, train=False), self.device)
            with autocast_for(self.device):
                _, sums = self.task.loss(self.model, tensors)
            acc.add(sums)
        self.model.train()
        return acc.reduced()

    def _metrics(self, train_sums: Mapping[str, float], val_sums: Mapping[str, float] | None
                 ) -> dict[str, float]:
        train = self.task.summarize(train_sums) if train_sums else {"loss": math.nan}
        out = {"epoch": float(self.epoch), "step": float(self.step),
               "train_loss": float(train["loss"]),
               "lr": float(self.optimizer.param_groups[0]["lr"]),
               # Mid-epoch checkpoints are not validated: a huge loss ranks them below
               # every validated one in Ray's keep-best retention (the latest is always
               # kept). Not +inf: Ray's run snapshot stores inf as null and then fails to
               # restore the run (TypeError in the controller's scoring).
               "val_loss": UNVALIDATED_LOSS}
        if val_sums is not None:
            val = self.task.summarize(val_sums)
            out["val_loss"] = float(val["loss"])
            out.update({f"val_{k}": float(v) for k, v in val.items() if k != "loss"})
        return out

    def run(self) -> None:
        spec = self.spec
        while self.epoch < spec.epochs:
            train_sums, timings = self._train_epoch()
            val_sums = self._validate()
            self.epoch += 1
            self.batch_in_epoch = 0
            metrics = self._metrics(train_sums, val_sums)
            metrics["epoch"] = float(self.epoch)
            metrics.update(timings)
            self.history.append({k: metrics[k] for k in sorted(metrics)})
            self.train_sums = SumAccumulator(self.device)
            if self.rank == 0:
                extra = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                  if k.startswith("val_") and k != "val_loss")
                log.info("epoch %d/%d done at step %d: train loss %.4f, val loss %.4f%s; "
                         "%s samples/s over %.1f s, of which %.1f s waiting for input "
                         "batches on rank 0", self.epoch, spec.epochs, self.step,
                         metrics["train_loss"], metrics["val_loss"],
                         f", {extra}" if extra else "",
                         f"{timings['samples_per_s']:,.0f}", timings["epoch_seconds"],
                         timings["input_wait_seconds"])
            self._save(metrics, {})


def _upload(checkpoint: Any, dir_name: str) -> Any:
    """Ray Train `checkpoint_upload_fn`: replace any stale folder of an interrupted attempt,
    copy the data files, then checkpoint.json."""
    import ray.train

    storage = ray.train.get_context().get_storage()
    fs = storage.storage_filesystem
    dest = storage.build_checkpoint_path_from_name(dir_name)
    ckpt.replace_checkpoint(checkpoint.path, fs, dest)
    return ray.train.Checkpoint(dest, filesystem=fs)


def train_loop_per_worker(config: Mapping[str, Any]) -> None:
    """The function given to TorchTrainer: `config["spec"]` is a LoopSpec."""
    spec: LoopSpec = config["spec"]
    if spec.local_checkpoints is None:  # a worker process (local mode: the driver's own)
        # Ray Train forwards worker log records to the driver; only our level needs setting.
        logging.getLogger("pipeline").setLevel(logging.INFO)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # a line per chunk, epoch
    _Worker(spec).run()
