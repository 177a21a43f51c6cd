"""Console logging and progress display (rich), set up once by the CLI and the jobs."""

from __future__ import annotations

import logging
import os

from rich.console import Console
from rich.logging import RichHandler

console = Console(stderr=True)


def setup_logging(level: str | int | None = None) -> None:
    """Log lines with time and logger name to stderr; `PIPELINE_LOG_LEVEL` sets the level."""
    level = level or os.environ.get("PIPELINE_LOG_LEVEL", "INFO")
    root = logging.getLogger()
    if any(isinstance(h, RichHandler) for h in root.handlers):
        return
    handler = RichHandler(console=console, show_path=False, rich_tracebacks=False,
                          markup=False, log_time_format="%H:%M:%S")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter that drowns our numbers at INFO.
    for noisy in ("py4j", "fsspec", "urllib3", "filelock", "ray.data"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
