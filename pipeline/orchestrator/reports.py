"""Where a stage's reports are: the one rule `pipeline run`, `pipeline status` and the run
summary follow.

A stage's reports are files of its own published folder, listed by its manifest:

- `extra["report"]`: the URL of its main report (a file of the stage folder);
- `extra["reports"]`: every report file, as paths relative to the stage folder.

Only manifest files ending in .html or .json count, so a report is always a published,
digest-checked file and a stale URL never points outside its stage. The main report comes
first.

A stage that fails after computing figures worth seeing (an evaluation whose gate failed)
publishes nothing, but leaves its report at `failed_report(run, stage, suffix)`:
`<run>/reports/failed/<stage, '/' as '_'>.html|json`. The runner removes those files once
the stage is done or cached, so a report under `failed/` always belongs to the stage's
latest outcome.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from pipeline.storage import Location, Manifest, RunPaths

REPORT_SUFFIXES = (".html", ".json")
FAILED_DIR = "failed"


def failed_report(run: RunPaths, stage: str, suffix: str) -> Location:
    """Where stage `stage` keeps a report of an attempt that did not publish."""
    return run.reports / FAILED_DIR / (stage.replace("/", "_") + suffix)


def clear_failed_reports(run: RunPaths, stage: str) -> None:
    """Remove the reports a failed attempt of `stage` left (the stage is now done)."""
    for suffix in REPORT_SUFFIXES:
        failed_report(run, stage, suffix).remove()


def _is_main(manifest: Manifest, rel: str) -> bool:
    main = str(manifest.extra.get("report") or "")
    # By the stage-relative tail, so a run folder copied or moved elsewhere still matches.
    return bool(main) and (main == rel or main.endswith(f"/{manifest.stage}/{rel}"))


def report_files(manifest: Manifest | None) -> list[str]:
    """The stage's report files, relative to its folder, main report first."""
    if manifest is None:
        return []
    listed = manifest.extra.get("reports")
    named = ({str(p).lstrip("/") for p in listed}
             if isinstance(listed, Sequence) and not isinstance(listed, str) else set())
    files = [f.path for f in manifest.files if f.path.endswith(REPORT_SUFFIXES)]
    main = [p for p in files if _is_main(manifest, p)][:1]
    return main + [p for p in files if p in named and p not in main]


def report_urls(stage: Location, manifest: Manifest | None) -> tuple[str, ...]:
    """The URLs of the reports of the stage published at `stage`, main report first."""
    return tuple((stage / rel).url for rel in report_files(manifest))


def relative_link(from_stage: str, to_stage: str, rel: str) -> str:
    """The relative link from a page in stage folder `from_stage` to the file `rel` of stage
    `to_stage`, both stages of one run (e.g. reports/summary -> evaluate/text:
    `../../evaluate/text/report.html`)."""
    return posixpath.relpath(posixpath.join(to_stage, rel), from_stage)
