"""`ray job submit` entry point for the evaluate stages of a run.

    ray job submit --working-dir . -- python jobs/evaluate.py \\
        --config configs/example.yaml --run-id R [--task images ...] [--set k=v ...]

Runs `evaluate/<task>` for each --task (default: the config's modalities) through the
orchestrator, so cached evaluations are skipped and outputs are published atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import pipeline  # noqa: F401
except ImportError:  # run from a checkout (e.g. a Ray job's working dir) without install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from pipeline.config import ConfigError, load_config
    from pipeline.evaluate.cli import TASKS, evaluate_stages
    from pipeline.logs import setup_logging
    from pipeline.orchestrator import StageFailed, run_pipeline

    p = argparse.ArgumentParser(description="Evaluate trained models of a run.")
    p.add_argument("--config", "-c", metavar="YAML")
    p.add_argument("--run-id", required=True)
    p.add_argument("--task", action="append", choices=TASKS, help="repeatable")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE")
    args = p.parse_args(argv)
    setup_logging()
    try:
        cfg = load_config(args.config, [*args.overrides, f"run_id={args.run_id}"])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        outcomes = run_pipeline(cfg, evaluate_stages(args.task or list(cfg.modalities)))
    except StageFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    for o in outcomes:
        print(f"{o.name}: {o.state} {o.summary}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
