"""Driver side of training: build and run a `ray.train.torch.TorchTrainer` for one modality.

`train_task(cfg, modality, data, run)` reads the published split stage `data`, builds the
modality's training task from its spec (class vocabulary and task statistics from the train
split), prepares the Ray Data shards (pipeline.train.data), and runs the generic loop
(pipeline.train.loop) on `cfg.train.scaling.num_workers` workers: NCCL on GPUs, gloo on
CPUs. With `num_workers: 0` it uses Ray Train's local mode: the loop runs in this process,
as the one rank of one, without worker actors (no start-up of a controller and worker
processes, about 20 s on 2 cores; no restarts on failure: `max_failures` does not apply),
with the same data order, hence the same losses and weights, as one worker. It returns a
`TrainResult` and writes nothing but checkpoints: the train stage (pipeline.train.stage)
publishes the result in its own folder.

Checkpoints live in `<run>/checkpoints/train_<modality>/checkpoint_<step>/` (RunConfig
storage_path = `<run>/checkpoints`, name = `train_<modality>`). Resumption:

- worker failure: Ray Train restarts the worker group (FailureConfig.max_failures) and
  hands the workers the latest reported checkpoint (`ray.train.get_checkpoint()`);
- driver restart (the same run id again): Train V2 finds its run snapshot under the same
  storage_path/name and does the same. Independently, the driver scans the folder for the
  newest *complete* checkpoint (checkpoint.json present, files matching their hashes) and
  passes it to the workers too; they resume from whichever of the two is newer and valid.
  The driver checks it first: a checkpoint of other data (manifest digest) or of other
  training settings (config digest) stops the run with an error naming both digests, and
  a checkpoint that already completed every epoch returns its result without training.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from pipeline import modalities
from pipeline.config import PipelineConfig, ScalingConfig, to_dict
from pipeline.ray_env import init_ray
from pipeline.storage import Location, RunPaths, digest_of, move_tree, read_manifest
from pipeline.train import UNVALIDATED_LOSS, data
from pipeline.train import checkpoint as ckpt
from pipeline.train.loop import FaultSpec, LocalCheckpoints, LoopSpec, train_loop_per_worker

if TYPE_CHECKING:
    from pipeline.modalities import TrainingSpec

log = logging.getLogger(__name__)

#: TrainConfig fields that do not change what is trained (safe to change on resume); the
#: modalities' own sections are added by `_not_resume_relevant` (each is compared alone)
_RUN_SETTINGS = ("checkpoint_every_steps", "keep_best", "max_failures", "log_every_steps",
                 "scaling")


def _not_resume_relevant() -> frozenset[str]:
    return frozenset((*_RUN_SETTINGS, *modalities.names()))


def training_of(modality: str) -> TrainingSpec:
    """The training spec of `modality`; ValueError when it trains no model."""
    spec = modalities.get(modality).training
    if spec is None:
        raise ValueError(f"modality {modality!r} has no training task")
    return spec


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced (the train stage publishes it as result.json)."""

    modality: str
    best_checkpoint: str | None  # URL of the retained checkpoint with the lowest val_loss
    best_val_loss: float
    latest_checkpoint: str | None
    final_metrics: Mapping[str, float]
    history: tuple[Mapping[str, float], ...]  # one entry per epoch: train/val loss, ...
    data_digest: str
    config_digest: str
    resumed_from: str | None = None
    prepare_seconds: float = 0.0  # reading and sharding the data on the driver
    fit_seconds: float = 0.0  # TorchTrainer.fit, Ray Train setup included
    task_state: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_root(run: RunPaths, modality: str) -> Location:
    """The folder holding one modality's checkpoints (Ray Train's experiment folder)."""
    return run.checkpoints / experiment_name(modality)


def experiment_name(modality: str) -> str:
    return f"train_{modality}"


def world_size(scaling: ScalingConfig) -> int:
    """Ranks that train: `num_workers`, or 1 in Ray Train's local mode (`num_workers: 0`)."""
    return max(1, scaling.num_workers)


def resolve_use_gpu(scaling: ScalingConfig) -> bool:
    """`use_gpu: auto` trains on GPUs when the Ray cluster (local mode: this machine) has
    one per rank."""
    if scaling.use_gpu != "auto":
        return scaling.use_gpu == "yes"
    import ray

    local = scaling.num_workers == 0
    gpus = (float(ray.cluster_resources().get("GPU", 0.0))
            if ray.is_initialized() and not local else 0.0)
    if gpus == 0.0:
        import torch

        gpus = float(torch.cuda.device_count())
    return gpus >= world_size(scaling)


def _warn_if_too_few_nodes(scaling: ScalingConfig) -> None:
    """STRICT_SPREAD needs a node per worker; with fewer, Ray Train waits for nodes to join
    and then fails the worker group start. Say so up front, with the numbers."""
    import ray

    if scaling.placement_strategy != "STRICT_SPREAD" or not ray.is_initialized():
        return
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    if alive < scaling.num_workers:
        log.warning("placement_strategy STRICT_SPREAD needs %d nodes for %d workers, the "
                    "cluster has %d alive: training waits for more nodes to join",
                    scaling.num_workers, scaling.num_workers, alive)


def resume_config(cfg: PipelineConfig, modality: str,
                  task_state: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share with the current run to be resumed."""
    skip = _not_resume_relevant()
    train = {k: v for k, v in to_dict(cfg.train).items() if k not in skip}
    flat = {f"train.{k}": v for k, v in train.items()}
    flat.update({f"train.{modality}.{k}": v
                 for k, v in to_dict(training_of(modality).config(cfg)).items()})
    # The data order per rank; local mode is one rank, so it resumes a one-worker run's
    # checkpoints and the other way round.
    flat["train.scaling.num_workers"] = world_size(cfg.train.scaling)
    flat.update({f"task.{k}": v for k, v in task_state.items()})
    return flat


def _vocabulary(stage: Location, column: str) -> list[str]:
    import pyarrow.compute as pc

    values = data.read_split_columns(stage, "train", [column]).column(column)
    return sorted(str(v) for v in pc.unique(values.drop_null()).to_pylist())


def _best(root: Location) -> tuple[str | None, float]:
    fs, path = root.filesystem()
    scored = [(float(m.metrics.get("val_loss", math.inf)), p)
              for p, m in ckpt.list_checkpoints(fs, path)]
    finite = [(v, p) for v, p in scored if math.isfinite(v) and v < UNVALIDATED_LOSS]
    if not finite:
        return None, math.nan
    value, best = min(finite)
    return root.url_of(best), value


def _result(modality: str, root: Location, data_digest: str, config_digest: str,
            resumed_from: str | None, task_state: Mapping[str, Any],
            timings: tuple[float, float]) -> TrainResult:
    fs, path = root.filesystem()
    latest = ckpt.latest_checkpoint(fs, path)
    if latest is None:
        raise ckpt.CheckpointError(f"training of {modality} left no complete checkpoint "
                                   f"under {root}")
    latest_path, meta = latest
    best_url, best_loss = _best(root)
    history = tuple(dict(h) for h in meta.history)
    result = TrainResult(
        modality=modality, best_checkpoint=best_url, best_val_loss=best_loss,
        latest_checkpoint=root.url_of(latest_path),
        final_metrics=dict(history[-1]) if history else dict(meta.metrics),
        history=history, data_digest=data_digest, config_digest=config_digest,
        resumed_from=resumed_from, prepare_seconds=timings[0], fit_seconds=timings[1],
        task_state=dict(task_state))
    final = result.final_metrics
    log.info("%s: %d epoch(s); final train loss %.4f, val loss %.4f; best val loss %.4f at "
             "%s", modality, len(history), float(final.get("train_loss", math.nan)),
             float(final.get("val_loss", math.nan)), best_loss, best_url)
    return result


def _run_config(cfg: PipelineConfig, run: RunPaths, modality: str) -> Any:
    import ray.train

    storage_fs, storage_path = run.checkpoints.arrow_filesystem()
    return ray.train.RunConfig(
        name=experiment_name(modality), storage_path=storage_path,
        storage_filesystem=None if run.checkpoints.is_local else storage_fs,
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=cfg.train.keep_best, checkpoint_score_attribute="val_loss",
            checkpoint_score_order="min"),
        failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures))


def superseded_root(root: Location, meta: ckpt.CheckpointMeta) -> Location:
    """Where checkpoints of an earlier version of a stage are kept (named by the config and
    data digests they were made with)."""
    return root.parent.join("superseded",
                            f"{root.name}-{meta.config_digest[:12]}-{meta.data_digest[:12]}")


def _supersede(root: Location, meta: ckpt.CheckpointMeta, why: str) -> None:
    """Move a checkpoint folder made from `why` out of the way (Ray Train's run snapshot
    with it), so that training starts afresh under the same name; nothing is deleted but an
    older copy of the very same version."""
    target = superseded_root(root, meta)
    target.remove()
    fs, path = root.filesystem()
    move_tree(fs, path, target.path)
    log.warning("checkpoints in %s were made from %s (step %d); moved them to %s and "
                "training from scratch", root, why, meta.step, target)


def train_task(cfg: PipelineConfig, modality: str, data_stage: Location, run: RunPaths,
               *, fault: FaultSpec | None = None, supersede: bool = False) -> TrainResult:
    """Train `modality`'s task on the published split stage `data_stage`; resume if the run
    has a checkpoint. Returns the TrainResult; writes nothing but checkpoints.

    A checkpoint made from other data or another training configuration is refused with an
    error naming both digests; with `supersede=True` (the train stage, which re-runs exactly
    because its data or config changed) it is moved to `checkpoints/superseded/` instead and
    training starts from scratch."""
    import ray.train
    import torch
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchConfig, TorchTrainer

    spec = training_of(modality)
    started = time.perf_counter()
    init_ray(cfg.ray)
    data_digest = read_manifest(data_stage).content_digest
    root = checkpoint_root(run, modality)
    fs, root_path = root.filesystem()
    found = ckpt.latest_checkpoint(fs, root_path)
    if found is not None and supersede and found[1].data_digest != data_digest:
        _supersede(root, found[1], "other data")
        found = None
    if found is not None:  # before any data work: other data can never be resumed
        ckpt.check_data(found[1], root.url_of(found[0]), data_digest)

    column = spec.vocabulary_column
    labels: Sequence[str] | None = _vocabulary(data_stage, column) if column else None
    task = spec.make_task(cfg, labels)
    scaling = cfg.train.scaling
    task_state: dict[str, Any] = {"labels": list(labels)} if labels is not None else {}
    prepare = getattr(task, "prepare", None)
    if callable(prepare):  # optional hook: statistics of the train split (e.g. pos_weight)
        task_state.update(prepare(partial(data.read_split_columns, data_stage, "train")))
    resume = resume_config(cfg, modality, task_state)
    config_digest = digest_of(resume)
    if found is not None and supersede and found[1].config_digest != config_digest:
        _supersede(root, found[1], "another training configuration")
        found = None
    resumed_from = root.url_of(found[0]) if found else None
    if found is not None:
        ckpt.check_resumable(found[1], resumed_from or "", config_digest, data_digest, resume)
    prepare_seconds = time.perf_counter() - started
    if found is not None and found[1].epoch >= cfg.train.epochs:
        log.info("%s: checkpoint %s already completed %d epochs; nothing to train",
                 modality, resumed_from, found[1].epoch)
        return _result(modality, root, data_digest, config_digest, resumed_from,
                       task_state, (prepare_seconds, 0.0))

    preprocess = getattr(task, "preprocess", None)  # optional hook, see pipeline.train.data
    local = scaling.num_workers == 0
    inputs = data.prepare_inputs(data_stage, task.columns, world_size(scaling),
                                 cfg.train.seed,
                                 preprocess=preprocess if callable(preprocess) else None)
    prepare_seconds = time.perf_counter() - started
    task_cfg = spec.config(cfg)
    use_gpu = resolve_use_gpu(scaling)
    loop = LoopSpec(
        task=task, modality=modality, epochs=cfg.train.epochs, seed=cfg.train.seed,
        lr=task_cfg.lr, weight_decay=cfg.train.weight_decay,
        warmup_steps=cfg.train.warmup_steps, grad_accum_steps=cfg.train.grad_accum_steps,
        grad_clip=cfg.train.grad_clip, checkpoint_every_steps=cfg.train.checkpoint_every_steps,
        log_every_steps=cfg.train.log_every_steps, batch_size=task_cfg.batch_size,
        n_chunks=len(inputs.chunks), batches_per_epoch=inputs.batches_per_epoch(
            task_cfg.batch_size), config_digest=config_digest, data_digest=data_digest,
        resume_config=resume, task_state=task_state,
        resume_from=root.at(resumed_from) if resumed_from else None,
        fault=fault if fault is not None else FaultSpec.from_env(),
        threads=scaling.cpus_per_worker,
        local_checkpoints=(LocalCheckpoints(root, cfg.train.keep_best) if local else None),
        device=("cuda" if use_gpu else "cpu") if local else None,
        local_tables=inputs.tables if local else None)
    _warn_if_too_few_nodes(scaling)
    resources = {"CPU": float(scaling.cpus_per_worker)}
    if use_gpu:
        resources["GPU"] = 1.0
    where = (f"in this process (Ray Train local mode, {'GPU' if use_gpu else 'CPU'}, "
             f"{scaling.cpus_per_worker} torch thread(s); no restarts on failure)" if local
             else f"on {scaling.num_workers} {'GPU' if use_gpu else 'CPU'} worker(s) "
                  f"({'nccl' if use_gpu else 'gloo'})")
    log.info("%s: training %s, %d train rows/epoch, %d val rows, %d optimizer steps; "
             "checkpoints in %s", modality, where, inputs.train_rows, inputs.val_rows,
             loop.total_steps, root)
    datasets = dict(inputs.datasets())
    if local:  # no DataConfig applies in local mode: each dataset keeps its block order
        for ds in datasets.values():
            ds.context.execution_options.preserve_order = True
    trainer = TorchTrainer(
        train_loop_per_worker, train_loop_config={"spec": loop},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=use_gpu and not local,
            resources_per_worker=None if local else resources,
            placement_strategy=scaling.placement_strategy),
        run_config=_run_config(cfg, run, modality),
        datasets=datasets,  # type: ignore[arg-type]
        dataset_config=ray.train.DataConfig(
            datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)))
    fit_started = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        trainer.fit()
    finally:  # local mode set this process's torch threads
        torch.set_num_threads(threads)
    fit_seconds = time.perf_counter() - fit_started
    return _result(modality, root, data_digest, config_digest, resumed_from, task_state,
                   (prepare_seconds, fit_seconds))
