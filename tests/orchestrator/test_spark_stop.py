"""Stopping the runner's Spark session leaves no Py4J socket for a forked child to break,
so a successful run prints no `ConnectionResetError` traceback when the Ray stages start
(issue 13, item 14)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# What the runner does: Spark stages through LazySpark, then stop it before a Ray stage,
# then a step that forks (Ray starts its processes with a preexec_fn; a fork-mode worker
# behaves the same) while Python still collects the Spark stages' JavaObjects.
SCRIPT = textwrap.dedent("""
    import gc, multiprocessing, sys, time
    from pipeline.logs import setup_logging
    from pipeline.config import load_config
    from pipeline.orchestrator.stages import LazySpark

    setup_logging("INFO")
    cfg = load_config(None, [f"storage.root=file://{sys.argv[1]}"])
    lazy = LazySpark(cfg)
    spark = lazy()
    frames = [spark.range(i).selectExpr("id % 3 AS k") for i in range(8)]
    assert frames[-1].groupBy("k").count().count() == 3
    del frames[:4]
    gc.collect()
    time.sleep(0.5)  # Py4J's finalizer thread now holds a connection of its own
    lazy.stop()
    child = multiprocessing.get_context("fork").Process(target=print, args=("step",))
    child.start()
    child.join()
    del frames
    gc.collect()
    time.sleep(1.0)  # the finalizer thread would send on a connection reset by the JVM
    print("done", flush=True)
""")


def test_runner_style_spark_stop_then_fork_prints_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONHASHSEED": "0"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["step", "done"]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Connection reset" not in result.stderr
    assert "Py4J gateway and JVM stopped" in result.stderr
