"""Entry point that runs ONE stage of a run as a job (spark-submit or a Ray job).

    spark-submit --master spark://HOST:7077 --py-files pipeline.zip \\
        jobs/stage.py --spec file:///data/runs/R/_jobs/ingest/text/ATTEMPT.spec.json
    ray job submit --address http://HOST:8265 --working-dir JOBDIR \\
        --runtime-env-json '{"py_modules": ["PKGDIR/pipeline"]}' -- \\
        python jobs/stage.py --spec URL

The orchestrator (`pipeline run` with spark.backend=spark-submit or ray.backend=job)
writes the spec and starts this (with `--storage-options JSON` when storage.options is
set); the job rebuilds the stage from the spec's factory reference. See
pipeline/orchestrator/job.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    import pipeline  # noqa: F401
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.orchestrator.job import main

if __name__ == "__main__":
    sys.exit(main())
