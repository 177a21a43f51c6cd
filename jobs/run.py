"""Entry point for the whole pipeline under `spark-submit` or `ray job submit`.

    ray job submit --working-dir . -- python jobs/run.py --config configs/example.yaml
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
