"""Entry point for the whole pipeline under `spark-submit` or `ray job submit`.

    ray job submit --working-dir . -- python jobs/run.py --config configs/example.yaml
    ray job submit --working-dir . -- python jobs/run.py --from train --run-id nightly

Arguments are those of `pipeline run` (selection with --from/--until/--only, --dry-run);
the exit code too: 0 ok, 1 a stage failed or the run is locked, 2 bad configuration or
selection, 130 interrupted.
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
