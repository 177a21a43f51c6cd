"""The spark-submit backend: one Spark stage as `spark-submit ... jobs/stage.py --spec URL`.

The package goes to the driver and executors with `--py-files pipeline.zip` (see
package.py); the job reads its spec from the run folder and writes its result next to it
(see job.py). The job's output is streamed line by line into our log as it runs. The
driver runs here (client mode), so it inherits this process's environment: that is how
secrets such as the HMAC key reach it, never through argv or the spec.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from pipeline.config import SparkConfig
from pipeline.orchestrator.job import job_argv, make_spec, read_result, write_spec
from pipeline.orchestrator.package import Bundle, build_bundle
from pipeline.orchestrator.retry import RetryableError
from pipeline.orchestrator.stages import Stage, StageContext, StageResult

log = logging.getLogger(__name__)

TAIL_LINES = 40
# Lines of spark-submit's output that mean the cluster could not be reached (worth
# another attempt), as opposed to a job that ran and failed.
_UNREACHABLE = ("Failed to connect to master", "All masters are unresponsive",
                "Connection refused", "Application has been killed. Reason: All masters")


class SparkSubmitFailed(RuntimeError):
    """spark-submit exited non-zero; the message has the exit code and the log tail."""


class SparkMasterUnreachable(SparkSubmitFailed, RetryableError):
    """spark-submit could not reach its master: transient, the orchestrator may retry."""


def spark_submit_program(cfg: SparkConfig, environ: Mapping[str, str]) -> str:
    """The spark-submit to run (see `SparkConfig.submit_command`)."""
    if cfg.submit_command:
        return cfg.submit_command
    home = environ.get("SPARK_HOME")
    candidates = [Path(home) / "bin" / "spark-submit"] if home else []
    candidates.append(Path(sys.executable).parent / "spark-submit")
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("spark-submit")
    if found is None:
        raise FileNotFoundError("spark-submit not found: set spark.submit_command, SPARK_HOME,"
                                " or install pyspark in this Python")
    return found


def spark_submit_argv(cfg: SparkConfig, program: str, bundle: Bundle,
                      job_args: Sequence[str]) -> list[str]:
    """The full command line. It names files, URLs and the storage options (`job_argv`)
    only: no secret ever goes here."""
    quiet = ([] if any("spark.log.level" in a for a in cfg.submit_args)
             else ["--conf", "spark.log.level=WARN"])  # Spark's INFO drowns our numbers
    return [program, "--master", cfg.submit_master, "--name", f"{cfg.app_name}-stage",
            *quiet, *cfg.submit_args, "--py-files", str(bundle.zip_path), str(bundle.entry),
            *job_args]


def spark_submit_env(cfg: SparkConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: ours (the driver runs here and needs our secrets), with the
    driver on this interpreter and the executors on `submit_python` (default: the same)."""
    env = dict(environ)
    env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PYSPARK_PYTHON"] = cfg.submit_python or environ.get("PYSPARK_PYTHON") or sys.executable
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    env.setdefault("COLUMNS", "400")  # whole log lines in the streamed job log
    # Set when this process itself runs under spark-submit; the job starts its own JVM.
    env.pop("PYSPARK_GATEWAY_PORT", None)
    return env


def _pump(stream: IO[str], prefix: str, tail: deque[str]) -> None:
    for raw in stream:
        line = raw.rstrip()  # rich pads its lines to the console width
        tail.append(line)
        log.info("%s %s", prefix, line)


def run_command(argv: Sequence[str], env: Mapping[str, str], prefix: str,
                timeout_s: float | None) -> tuple[int, list[str], float]:
    """Run `argv`, streaming its merged output to our log; (exit code, tail, seconds)."""
    started = time.perf_counter()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace")
    pump = threading.Thread(target=_pump, args=(proc.stdout, prefix, tail), daemon=True)
    pump.start()
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pump.join(timeout=5)
        raise SparkSubmitFailed(f"{prefix} ran past spark.submit_timeout_s={timeout_s}s and "
                                "was killed; last lines:\n" + "\n".join(tail)) from None
    except BaseException:
        proc.kill()  # interrupted: never leave a job running on its own
        proc.wait()
        raise
    pump.join(timeout=30)
    return code, list(tail), time.perf_counter() - started


def run_spark_submit(stage: Stage, ctx: StageContext,
                     environ: Mapping[str, str] | None = None) -> StageResult:
    """Run `stage` as a spark-submit job and return the StageResult it wrote."""
    cfg = ctx.cfg.spark
    environ = os.environ if environ is None else environ
    bundle = build_bundle()
    spec = make_spec(stage, ctx)
    spec_url = write_spec(spec)
    argv = spark_submit_argv(cfg, spark_submit_program(cfg, environ), bundle,
                             job_argv(spec, spec_url))
    prefix = f"[spark-submit {stage.name} {spec.attempt}]"
    log.info("%s starting on master %s with %d extra argument(s), package %s",
             prefix, cfg.submit_master, len(cfg.submit_args), bundle.version)
    code, tail, seconds = run_command(argv, spark_submit_env(cfg, environ), prefix,
                                      cfg.submit_timeout_s)
    if code != 0:
        text = "\n".join(tail)
        kind = (SparkMasterUnreachable if any(m in text for m in _UNREACHABLE)
                else SparkSubmitFailed)
        raise kind(f"spark-submit of stage {stage.name} (attempt {spec.attempt}, master "
                   f"{cfg.submit_master}) exited with {code} after {seconds:.1f}s; last "
                   f"{len(tail)} lines:\n{text}")
    try:
        result = read_result(spec)
    except FileNotFoundError:
        raise SparkSubmitFailed(f"spark-submit of stage {stage.name} exited 0 after "
                                f"{seconds:.1f}s but wrote no result at {spec.result_url}"
                                ) from None
    log.info("%s done in %.1fs: %s", prefix, seconds, result.summary)
    return result
