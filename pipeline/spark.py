"""The SparkSession for local mode (tests, laptops) or a cluster (spark-submit).

Local mode binds everything to 127.0.0.1 and runs the Python workers with this very
interpreter, so the executors see the same packages as the driver. Under `spark-submit`
the master and resources come from the command line; we only add the settings every
job needs (UTC session time zone, Arrow, deterministic shuffle width).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from pyspark.sql import SparkSession

from pipeline.config import SparkConfig

log = logging.getLogger(__name__)


def _under_spark_submit() -> bool:
    # When spark-submit launches the Python driver, the JVM is already running and hands
    # its gateway port to the driver; a plain `python` run starts its own JVM instead.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def get_spark(cfg: SparkConfig) -> SparkSession:
    """Get or create the SparkSession described by `cfg`.

    When the process was launched by `spark-submit`, `cfg.master` is ignored: the master
    given on the command line wins, as Spark users expect.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    submitted = _under_spark_submit()
    if not submitted:
        builder = builder.master(cfg.master).config("spark.driver.memory", cfg.driver_memory)
    if cfg.master.startswith("local") and not submitted:
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1")
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.ui.enabled": str(cfg.ui_enabled).lower(),
        "spark.ui.host": "127.0.0.1",
        # Spark's own console progress bar writes over the pipeline's stage progress display
        # (and fills logs with carriage returns); stage progress and log lines replace it.
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.parquet.compression.codec": "zstd",
        # Raw inputs are often thousands of small files (one document or image each). Spark
        # lists more than 32 paths with a job of up to 10,000 tasks and charges every file
        # 4 MB of "open cost" when packing partitions; both make small files slow.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "32",
        "spark.sql.files.openCostInBytes": str(512 * 1024),
        # Our manifest replaces Hadoop's _SUCCESS marker; .crc files are noise in digests.
        "spark.hadoop.mapreduce.fileoutputcommitter.marksuccessfuljobs": "false",
    }
    settings.update(cfg.conf)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    log.info("Spark %s session on master %s with %d shuffle partitions", spark.version,
             spark.sparkContext.master, cfg.shuffle_partitions)
    return spark


def stop_spark(spark: SparkSession, timeout_s: float = 30.0) -> None:
    """Stop `spark` and, when this process launched the JVM (plain `python`, not under
    spark-submit), also its Py4J gateway and the JVM itself.

    Stopping the session alone leaves the gateway's sockets open, and a forked child
    (Ray starting its processes with a `preexec_fn`, a fork-mode DataLoader worker) runs
    Python's after-fork hooks, which finalize Py4J's per-thread connections with
    `shutdown()` on the sockets it shares with this process: the JVM then resets them,
    and this process's next Py4J call (a JavaObject's garbage collection) logs a
    `ConnectionResetError` traceback. With the gateway gone no socket is left to break;
    a later `get_spark` launches a fresh JVM. Under spark-submit the JVM launched us and
    owns the gateway, so only the session stops.
    """
    from pyspark import SparkContext

    spark.stop()
    gateway = SparkContext._gateway
    proc = getattr(gateway, "proc", None)
    if gateway is None or proc is None:
        return
    with SparkContext._lock:
        SparkContext._gateway = None
        SparkContext._jvm = None
    gateway.shutdown()  # closes every connection from this side and the callback server
    if proc.stdin is not None:
        proc.stdin.close()  # the gateway JVM exits when its stdin closes
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        log.warning("the Spark JVM (pid %d) did not exit in %.0f s; killing it", proc.pid,
                    timeout_s)
        proc.kill()
        proc.wait()
    log.info("Spark session, Py4J gateway and JVM stopped")
