"""Ship the `pipeline` package to a job: a deterministic zip and a clean module folder.

spark-submit ships code with `--py-files <zip>`; the Ray Jobs API with
`runtime_env={"py_modules": [<folder>]}` (Ray accepts a folder or a wheel there, not a
zip). Both are built from the files of the package this process imported, not from a
`make dist` run, and cached under `<cache>/<code_version>/`: the code version is a digest
of the package's sources, so a changed source builds a new bundle and an unchanged one
is reused. Builds are published with one rename, so concurrent runs never see a half-built
bundle.

The zip is byte-deterministic (sorted entries, fixed timestamps and permissions), so the
same sources give the same archive on every machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pipeline
from pipeline.storage import code_version

log = logging.getLogger(__name__)

# 1980-01-01, the earliest time a zip entry can carry: no build-time clock in the bytes.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}

# The job entry point, used only when this process runs from an installed wheel with no
# checkout next to it (jobs/stage.py is not part of the package). Same behaviour.
_ENTRY_FALLBACK = '''"""Run one pipeline stage as a job (generated copy of jobs/stage.py)."""
import sys

from pipeline.orchestrator.job import main

if __name__ == "__main__":
    sys.exit(main())
'''


@dataclass(frozen=True)
class Bundle:
    """Everything a job needs to import this exact code."""

    version: str
    zip_path: Path  # pipeline.zip for --py-files: top-level folder `pipeline/`
    module_dir: Path  # <bundle>/py/pipeline: for Ray's py_modules
    job_dir: Path  # <bundle>/job: working_dir of a Ray job, holds jobs/stage.py
    entry: Path  # <bundle>/job/jobs/stage.py: spark-submit's primary resource

    @property
    def entry_relative(self) -> str:
        """The entry point relative to `job_dir` (the Ray job's working directory)."""
        return self.entry.relative_to(self.job_dir).as_posix()


def package_files(root: Path) -> list[Path]:
    """The package's files under `root` in a stable order (no bytecode, no caches)."""
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_dir() or _SKIP_DIRS & set(rel.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        files.append(path)
    return files


def write_deterministic_zip(src_root: Path, arc_prefix: str, dest: Path) -> int:
    """Zip the package files under `src_root` as `<arc_prefix>/...` into `dest`.

    Same files in, same bytes out: entries are sorted, timestamps fixed, permissions
    0644. Returns the number of files written."""
    files = package_files(src_root)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(f"{arc_prefix}/{path.relative_to(src_root).as_posix()}",
                                   date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o100644 << 16
            info.create_system = 3  # unix, so the permissions above are read back
            zf.writestr(info, path.read_bytes(), compresslevel=6)
    return len(files)


def default_cache_dir() -> Path:
    """`$PIPELINE_CACHE_DIR`, else `$XDG_CACHE_HOME/pipeline`, else `~/.cache/pipeline`."""
    explicit = os.environ.get("PIPELINE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pipeline"


def _entry_source() -> str:
    """jobs/stage.py of the checkout this package was imported from, else the fallback."""
    checkout_entry = Path(pipeline.__file__).resolve().parents[1] / "jobs" / "stage.py"
    if checkout_entry.is_file():
        return checkout_entry.read_text(encoding="utf-8")
    return _ENTRY_FALLBACK


def _bundle_at(root: Path, version: str) -> Bundle:
    return Bundle(version=version, zip_path=root / "pipeline.zip",
                  module_dir=root / "py" / "pipeline", job_dir=root / "job",
                  entry=root / "job" / "jobs" / "stage.py")


def build_bundle(cache_dir: Path | None = None) -> Bundle:
    """The bundle of the running package's code, built once per code version."""
    src = Path(pipeline.__file__).resolve().parent
    if not src.is_dir():
        raise RuntimeError(f"the pipeline package at {src} is not a folder (imported from a "
                           "zip?); jobs can only be shipped from an installed package or a "
                           "checkout")
    version = code_version()
    cache = cache_dir or default_cache_dir()
    final = cache / version.replace("+", "-")
    bundle = _bundle_at(final, version)
    if bundle.zip_path.is_file() and bundle.entry.is_file() and bundle.module_dir.is_dir():
        return bundle
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{uuid.uuid4().hex[:8]}-", dir=cache))
    try:
        staged = _bundle_at(work, version)
        staged.module_dir.mkdir(parents=True)
        for path in package_files(src):
            target = staged.module_dir / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
        n_files = write_deterministic_zip(staged.module_dir, "pipeline", staged.zip_path)
        staged.entry.parent.mkdir(parents=True)
        staged.entry.write_text(_entry_source(), encoding="utf-8")
        try:
            work.rename(final)
        except OSError:
            # Another process published the same version first: its bundle is identical.
            if not bundle.zip_path.is_file():
                raise
        else:
            log.info("built job bundle %s: %d package files, zip %d bytes", final, n_files,
                     bundle.zip_path.stat().st_size)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return bundle
