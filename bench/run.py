"""End-to-end benchmark: the whole `make run` graph on sample data, against its budget.

The issue's target is absolute (the full graph for all three modalities on the embedded
defaults in under 5 minutes on 2 cores), so the "baseline" printed beside each figure is
that budget; the second run is measured too (it must be a no-op that takes seconds).

    .venv/bin/python bench/run.py                 # `pipeline run` into a fresh data root
    .venv/bin/python bench/run.py --fresh-clone   # git clone + `make run` (venv install too)

Per-stage seconds come from the run's `run.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 300.0


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}")
    return seconds, proc.stdout


def _stage_seconds(run_json: Path) -> dict[str, float]:
    state = json.loads(run_json.read_text())
    return {name: float(s.get("seconds", 0.0)) for name, s in state.get("stages", {}).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fresh-clone", action="store_true",
                        help="clone the repository into a temporary folder and time `make run`"
                        " there, virtualenv creation included")
    args = parser.parse_args()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_USAGE_STATS_ENABLED": "0"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-run-"))
    try:
        if args.fresh_clone:
            subprocess.run(["git", "clone", "-q", str(REPO), str(tmp / "main")], check=True)
            shared = REPO.parent / "shared"
            if shared.exists():
                (tmp / "shared").symlink_to(shared)
            cwd, cmd = tmp / "main", ["make", "run"]
            run_json = cwd / "data" / "runs" / "local" / "run.json"
        else:
            cwd = REPO
            root = tmp / "data"
            cmd = [str(REPO / ".venv" / "bin" / "pipeline"), "run", "--set",
                   f"storage.root=file://{root}"]
            run_json = root / "runs" / "local" / "run.json"
        first, _ = _timed(cmd, cwd, env)
        stages = _stage_seconds(run_json)
        second, out = _timed(cmd, cwd, env)
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}")
        print(f"{'what':<44}{'seconds':>10}{'budget':>10}{'ratio':>8}")
        label = "make run, fresh clone (setup included)" if args.fresh_clone else \
            "pipeline run, fresh data root"
        print(f"{label:<44}{first:>10.1f}{BUDGET_S:>10.0f}{first / BUDGET_S:>8.2f}")
        print(f"{'second run (no-op)':<44}{second:>10.1f}{'':>10}{'':>8}")
        print("nothing-to-do message printed:", "nothing to do" in out)
        print("per stage (run.json):")
        for name, seconds in stages.items():
            print(f"  {name:<42}{seconds:>10.1f}")
        print(f"  {'sum of stages':<42}{sum(stages.values()):>10.1f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
