"""The fixed cost of one Ray Train `fit` in local mode: a training function that does
nothing but report once, on 2 CPU workers (gloo), timed end to end on the driver.

Two settings of the Train controller's worker poll, interleaved in one process on one
local Ray (the driver's environment is read at each `fit`):

- Ray's default, `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2`;
- this project's local default, 0.25 s (`pipeline.ray_env.local_ray_env`).

Prints the median seconds of each and their ratio. Goal (performance issue): a `fit`
overhead of at most 5 s. What is left is process start-up: the controller, the
placement-group cleaner and each worker are new Python processes, and a worker imports
torch and `ray.train.torch` (about 4.4 s of CPU) before the training function runs.

    .venv/bin/python bench/fit_overhead.py [--pairs 3 --workers 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from pipeline.config import RayConfig
from pipeline.ray_env import init_ray

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
GOAL_S = 5.0


def _report_once(config: dict[str, object]) -> None:
    import ray.train

    ray.train.report({"step": 0})


def _fit_seconds(storage: str, name: str, workers: int, poll_s: str) -> float:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ[POLL_ENV] = poll_s
    trainer = TorchTrainer(
        _report_once, torch_config=TorchConfig(backend="gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers),
        run_config=ray.train.RunConfig(name=name, storage_path=storage))
    started = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="fits per setting")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    init_ray(RayConfig(num_cpus=max(2, args.workers)))
    print(f"ray.init: {time.perf_counter() - started:.1f} s")
    settings = {"Ray default (2 s poll)": "2", "local default (0.25 s poll)": "0.25"}
    seconds: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as storage:
        _fit_seconds(storage, "warm-up", args.workers, "0.25")  # first fit: cold caches
        for i in range(args.pairs):
            for label, poll in settings.items():  # interleaved: same machine load
                seconds[label].append(_fit_seconds(storage, f"{i}-{poll}", args.workers, poll))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"\nno-op fit, {args.workers} CPU workers, median of {args.pairs}:")
    print("| setting | seconds | runs |\n| --- | --- | --- |")
    for label, values in seconds.items():
        print(f"| {label} | {medians[label]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    ours, ray_default = medians["local default (0.25 s poll)"], medians["Ray default (2 s poll)"]
    print(f"\nratio local/Ray default: {ours / ray_default:.2f}; goal fit overhead <= {GOAL_S:.0f}"
          f" s: {'met' if ours <= GOAL_S else 'missed'} ({ours:.1f} s)")


if __name__ == "__main__":
    main()
