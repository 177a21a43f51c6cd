"""The fixed cost of one Ray Data Parquet read in local mode: `read_parquet` of a small
table (4 files, 1,000 rows each) through one `map_batches`, materialized, timed on the
driver. Evaluation and prediction start with such a read of each split.

Two settings of Ray Data's footer reader pool (`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`), each
on its own local Ray in a subprocess (a worker reads the variable when it starts), the
two alternating so that both see the same machine load:

- Ray's default, 32 `FooterReader` actors per read: 32 worker processes to start;
- this project's local default, 1 (`pipeline.ray_env.local_ray_env`).

Prints the median seconds of each and their ratio.

    .venv/bin/python bench/ray_data_read.py [--rounds 2 --reads 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FOOTER_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"

#: one local Ray, `reads` timed reads of `folder` after one warm-up read
PROBE = """
import json, os, sys, time
from pipeline.config import RayConfig
from pipeline.ray_env import init_ray

folder, reads = sys.argv[1], int(sys.argv[2])
init_ray(RayConfig(num_cpus=2))
import ray.data

def read():
    ds = ray.data.read_parquet(folder).map_batches(lambda b: b, batch_format="pyarrow")
    return ds.materialize().count()

read()  # warm-up: the first Ray Data job also starts Ray Data's own actors
seconds = []
for _ in range(reads):
    started = time.perf_counter()
    assert read() == 4000
    seconds.append(time.perf_counter() - started)
print("RESULT " + json.dumps(seconds))
"""


def _run(folder: Path, reads: int, footer_actors: str) -> list[float]:
    env = dict(os.environ)
    # set before init_ray, whose setdefault then keeps it (Ray's own 32 included)
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               **{FOOTER_ENV: footer_actors})
    proc = subprocess.run([sys.executable, "-c", PROBE, str(folder), str(reads)], env=env,
                          capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"probe failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [float(s) for s in json.loads(lines[-1][len("RESULT "):])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="subprocesses per setting")
    parser.add_argument("--reads", type=int, default=3, help="timed reads per subprocess")
    args = parser.parse_args()
    import pyarrow as pa
    import pyarrow.parquet as pq

    settings = {"Ray default (32 footer actors)": "32", "local default (1 actor)": "1"}
    seconds: dict[str, list[float]] = {k: [] for k in settings}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i in range(4):
            rows = range(i * 1000, (i + 1) * 1000)
            pq.write_table(pa.table({"id": list(rows), "x": [float(r) for r in rows]}),
                           folder / f"part-{i:05d}.parquet")
        started = time.perf_counter()
        for _ in range(args.rounds):
            for label, actors in settings.items():  # alternating: same machine load
                seconds[label].extend(_run(folder, args.reads, actors))
    medians = {k: statistics.median(v) for k, v in seconds.items()}
    print(f"Parquet read -> map_batches -> materialize, 4 files, 4,000 rows, local Ray with "
          f"2 CPUs; median of {args.rounds * args.reads} ({time.perf_counter() - started:.0f} s"
          " in all):")
    print("| setting | seconds | runs |\n| --- | --- | --- |")
    for label, values in seconds.items():
        print(f"| {label} | {medians[label]:.1f} | {', '.join(f'{v:.1f}' for v in values)} |")
    ours, ray_default = medians["local default (1 actor)"], medians["Ray default (32 footer "
                                                                     "actors)"]
    print(f"\nratio local/Ray default: {ours / ray_default:.2f}")


if __name__ == "__main__":
    main()
