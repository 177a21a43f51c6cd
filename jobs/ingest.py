"""spark-submit entry point for the ingest stage of one or more modalities.

    spark-submit --master spark://HOST:7077 --py-files dist/pipeline.zip \\
        jobs/ingest.py --config configs/example.yaml --modality text

The master comes from spark-submit; everything else from the config and --set overrides.
"""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
