"""`ray job submit` entry point for training one task of a run.

    ray job submit --working-dir . -- python jobs/train.py \\
        --config configs/example.yaml --run-id R --task transactions [--set k=v ...]

Trains on the run's published split stage `<run>/dedup/<task>/` (or --data URL) and
resumes from the run's last complete checkpoint when there is one. Works the same in local
mode (no ray.address: an in-process Ray is started).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    import pipeline  # noqa: F401
except ImportError:  # run from a checkout (e.g. a Ray job's working dir) without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.logs import setup_logging
    from pipeline.storage import RunPaths
    from pipeline.train import train_task

    p = argparse.ArgumentParser(description="Train one task with Ray Train.")
    p.add_argument("--config", "-c", metavar="YAML")
    p.add_argument("--run-id", required=True)
    p.add_argument("--task", required=True, help="text, images or transactions")
    p.add_argument("--data", help="split stage URL (default: <run>/dedup/<task>)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE")
    args = p.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, [*args.overrides, f"run_id={args.run_id}"])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    run = RunPaths(cfg.storage.root, args.run_id)
    result = train_task(cfg, args.task, args.data or run.stage(f"dedup/{args.task}"), run)
    print(json.dumps({"best_checkpoint": result.best_checkpoint,
                      "best_val_loss": result.best_val_loss, "report": result.report_url}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
