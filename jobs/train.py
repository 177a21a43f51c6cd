"""`ray job submit` entry point for training one modality of a run.

    ray job submit --working-dir . -- python jobs/train.py \\
        --config configs/example.yaml --run-id R --task transactions [--set k=v ...]

The same as `pipeline run --only train/<task> --run-id R ...`: trains on the run's
published `dedup/<task>` stage, resumes from the run's last complete checkpoint and
publishes `train/<task>/result.json`. Other arguments are passed on to `pipeline run`.
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
    p = argparse.ArgumentParser(description="Train one modality.", allow_abbrev=False)
    p.add_argument("--run-id", required=True)
    p.add_argument("--task", "--modality", dest="modality", required=True)
    known, rest = p.parse_known_args(argv)
    return ["run", "--only", f"train/{known.modality}", "--run-id", known.run_id, *rest]


if __name__ == "__main__":
    sys.exit(main(cli_args(sys.argv[1:])))
