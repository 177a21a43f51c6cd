"""The fixed cost of one Ray Train `fit` on a local Ray: a training function that does
nothing but report once, timed end to end on the driver.

Settings, interleaved in one process on one local Ray (the driver's environment is read
at each `fit`):

- on `--workers` CPU workers (gloo), the Train controller's worker poll at Ray's default
  (`RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2`) and at this project's local default, 0.25 s
  (`pipeline.ray_env.local_ray_env`);
- on 1 worker, and in Ray Train's local mode (`train.scaling.num_workers: 0`: the function
  runs in the driver process, no controller or worker processes).

Prints the median seconds of each and two ratios. Goal (performance issue): a `fit`
overhead of at most 5 s. With workers what is left is process start-up: the controller,
the placement-group cleaner and each worker are new Python processes, and a worker imports
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
    """Seconds of one `fit` on `workers` workers (0: Ray Train's local mode)."""
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
    n = args.workers
    settings = {  # label: (workers, poll seconds)
        f"{n} workers, Ray default (2 s poll)": (n, "2"),
        f"{n} workers, local default (0.25 s poll)": (n, "0.25"),
        "1 worker, local default (0.25 s poll)": (1, "0.25"),
        "Ray Train local mode (num_workers 0)": (0, "0.25"),
    }
    seconds: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as storage:
        _fit_seconds(storage, "warm-up", n, "0.25")  # first fit: cold caches
        for i in range(args.pairs):
            for j, (label, (workers, poll)) in enumerate(settings.items()):  # interleaved
                seconds[label].append(_fit_seconds(storage, f"{i}-{j}", workers, poll))
    medians = [statistics.median(v) for v in seconds.values()]
    print(f"\nno-op fit, median of {args.pairs}:")
    print("| setting | seconds | runs |\n| --- | --- | --- |")
    for (label, values), median in zip(seconds.items(), medians, strict=True):
        print(f"| {label} | {median:.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    ray_default, ours, one, local = medians
    print(f"\nratio 0.25 s/2 s poll ({n} workers): {ours / ray_default:.2f}; "
          f"local mode/1 worker: {local / one:.3f}")
    for label, value in ((f"{n} workers", ours), ("local mode", local)):
        print(f"goal fit overhead <= {GOAL_S:.0f} s, {label}: "
              f"{'met' if value <= GOAL_S else 'missed'} ({value:.2f} s)")


if __name__ == "__main__":
    main()
