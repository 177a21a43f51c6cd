"""`ray job submit` entry point for the evaluate stages of a run.

    ray job submit --working-dir . -- python jobs/evaluate.py \\
        --config configs/example.yaml --run-id R [--task images ...] [--set k=v ...]

The same as `pipeline evaluate --run-id R [--modality M ...] ...`: runs
`evaluate/<modality>` for each --task (default: the config's modalities) through the
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

from pipeline.cli import main


def cli_args(argv: list[str]) -> list[str]:
    """`pipeline` arguments for this job's arguments."""
    p = argparse.ArgumentParser(description="Evaluate a run.", allow_abbrev=False)
    p.add_argument("--run-id", required=True)
    p.add_argument("--task", "--modality", dest="modality", action="append", default=[])
    known, rest = p.parse_known_args(argv)
    picked = [arg for m in known.modality for arg in ("--modality", m)]
    return ["evaluate", "--run-id", known.run_id, *picked, *rest]


if __name__ == "__main__":
    sys.exit(main(cli_args(sys.argv[1:])))
