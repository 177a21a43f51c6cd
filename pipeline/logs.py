"""Console logging and progress display (rich), set up once by the CLI and the jobs."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)
HANDLER_NAME = "pipeline"  # our root handler, so that setup runs once per process


def setup_logging(level: str | int | None = None) -> None:
    """Log lines with time and logger name to stderr; `PIPELINE_LOG_LEVEL` sets the level.

    On a terminal, rich renders them; otherwise (a log file, CI, a spark-submit or Ray
    job whose output is streamed back) each record is one plain line, never wrapped, so
    it can be grepped and re-prefixed."""
    level = level or os.environ.get("PIPELINE_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if any(h.get_name() == HANDLER_NAME for h in root.handlers):
        return
    handler: logging.Handler
    if console.is_terminal:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False,
                              markup=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    handler.set_name(HANDLER_NAME)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that drowns our numbers at INFO.
    for noisy in ("py4j", "fsspec", "urllib3", "filelock", "ray.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
