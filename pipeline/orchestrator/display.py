"""Rich rendering of runs: the progress bar across stages, and the plan, summary, status
and lineage tables. Data comes in (outcomes, plan entries, RunStatus, chains); renderables
go out, so the CLI decides where they are printed.

Progress and log lines go to stderr (`pipeline.logs.console`); command results go to
stdout (`out`), so `pipeline status RUN --json | jq` works.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.padding import Padding
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pipeline.logs import console
from pipeline.orchestrator.lineage import Chain
from pipeline.orchestrator.plan import PlanEntry
from pipeline.orchestrator.runner import StageOutcome
from pipeline.orchestrator.status import RunStatus
from pipeline.redact import redact_url

out = Console(highlight=False)

_STYLE = {"ran": "green", "done": "green", "run": "yellow", "cached": "cyan", "failed": "red",
          "blocked": "red", "interrupted": "magenta", "running": "yellow",
          "skipped": "dim", "disabled": "dim", "unselected": "dim"}


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def _state(state: str) -> Text:
    return Text(state, style=_STYLE.get(state, ""))


def _figures(values: Any, limit: int = 4) -> str:
    if not values:
        return ""
    items = list(dict(values).items())
    shown = [f"{k}={v:,}" if isinstance(v, int) else
             f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in items[:limit]]
    return ", ".join(shown) + (f", +{len(items) - limit} more" if len(items) > limit else "")


class RichProgress:
    """A `ProgressHook` drawing `stage i/N, name, elapsed` (off when stderr is no TTY)."""

    def __init__(self, title: str) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"),
                                 BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=console,
                                 disable=not console.is_terminal, transient=False)
        self.title = title
        self.task = self.progress.add_task(title, total=None)
        self.started = 0.0

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()

    def stage_started(self, index: int, total: int, name: str, reason: str) -> None:
        self.started = time.perf_counter()
        self.progress.update(self.task, total=total, completed=index - 1,
                             description=f"{self.title}: stage {index}/{total} {name}")

    def stage_finished(self, index: int, total: int, outcome: StageOutcome) -> None:
        self.progress.update(self.task, completed=index)
        if outcome.state == "ran":
            self.progress.console.log(f"stage {index}/{total} {outcome.name} done in "
                                      f"{time.perf_counter() - self.started:.1f} s")


def summary_table(run_id: str, outcomes: Sequence[StageOutcome]) -> Table:
    """The final table of `pipeline run`: stage, state, seconds, attempts, summary."""
    table = Table(title=f"run {run_id}", title_justify="left")
    for column in ("stage", "state", "seconds", "summary"):
        table.add_column(column, overflow="fold", no_wrap=column in ("stage", "state"))
    for o in outcomes:
        seconds = f"{o.seconds:.1f}" if o.state == "ran" else ""
        summary = o.summary + (f" ({o.attempts} attempts)" if o.attempts > 1 else "")
        table.add_row(o.name, _state(o.state), seconds, escape(summary))
    return table


#: below this many columns the plan's reason goes under the stage name (see `plan_table`)
PLAN_WIDE_COLUMNS = 120


def plan_table(run_id: str, entries: Sequence[PlanEntry], run_url: str = "",
               width: int | None = None) -> Table:
    """What `pipeline plan` shows: each stage's decision, why, and its input sizes, with
    the run's folder (`run_url`) under the table.

    `width`: the console's columns. From `PLAN_WIDE_COLUMNS` up the reason has a column
    of its own; a narrower console (80 columns: many terminals, any pipe) would squeeze it
    to a few characters, one word per line, so there the reason goes on its own lines
    under the stage name, across the width that the input files column gave back."""
    wide = width is None or width >= PLAN_WIDE_COLUMNS
    table = Table(title=f"plan of run {run_id}", title_justify="left",
                  caption=f"run folder: {redact_url(run_url)}" if run_url else None,
                  caption_justify="left")
    columns = (("stage", "decision", "reason", "input files", "input bytes", "input rows")
               if wide else ("stage / reason", "decision", "input bytes", "input rows"))
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in ("stage", "decision"),
                         justify="right" if column.startswith("input") else "left",
                         ratio=1 if column in ("reason", "stage / reason") else None)
    for e in entries:
        known = [i.files for i in e.inputs if i.files is not None]
        n_files = "" if not e.inputs else (f"{sum(known):,}" if len(known) == len(e.inputs)
                                           else "?")
        n_bytes = "" if not e.inputs else human_bytes(e.input_bytes)
        rows = "" if not e.inputs or e.input_rows is None else f"{e.input_rows:,}"
        if wide:
            table.add_row(e.stage, _state(e.decision), escape(e.reason), n_files, n_bytes,
                          rows)
        else:
            # The reason indented under the name, so wrapped lines still read as its own.
            cell: RenderableType = Text(e.stage, style="bold")
            if e.reason:
                cell = Group(cell, Padding(Text(e.reason, style="dim"), (0, 0, 0, 2)))
            table.add_row(cell, _state(e.decision), n_bytes, rows)
    return table


def plan_footer(entries: Sequence[PlanEntry]) -> str:
    counts = {d: sum(e.decision == d for e in entries)
              for d in ("run", "cached", "blocked", "disabled", "unselected")}
    line = ", ".join(f"{n} {d}" for d, n in counts.items() if n)
    if counts["run"] == 0 and counts["blocked"] == 0:
        line += "; nothing to do: every stage is up to date"
    return line


def status_view(st: RunStatus) -> RenderableType:
    """`pipeline status`: states, durations, key figures, reports, lock holder."""
    table = Table(title=f"run {st.run_id}  ({st.run_url}, code {st.code_version})",
                  title_justify="left")
    for column in ("stage", "state", "seconds", "attempts", "key figures"):
        table.add_column(column, overflow="fold", no_wrap=column in ("stage", "state"))
    for s in st.stages:
        figures = _figures(s.metrics) or _figures(s.rows)
        if s.error:
            figures = f"{figures}\n[red]{escape(s.error)}[/red]" if figures else \
                f"[red]{escape(s.error)}[/red]"
        elif not figures:
            figures = escape(s.summary)
        state = s.state + ("" if s.published or s.state != "done" else " (output missing)")
        table.add_row(s.name, _state(state), "" if s.seconds is None else f"{s.seconds:.1f}",
                      "" if not s.attempts else str(s.attempts), figures)
    lines: list[RenderableType] = [table]
    if st.lock is not None:
        held = f"lock: held by pid {st.lock.pid} on {st.lock.host}"
        lines.append(Text(held + (f" (abandoned: {st.lock_stale_reason})"
                                  if st.lock_stale_reason else " (running now)")))
    lines.append(Text("reports:" + ("" if st.reports else " none yet")))
    lines += [Text(f"  {url}") for url in st.reports]
    return Group(*lines)


def lineage_view(chains: Sequence[Chain]) -> RenderableType:
    """`pipeline lineage`: one block per task, metric -> ... -> raw files."""
    if not chains:
        return Text("no evaluate/<task> or train/<task> manifest in this run yet")
    parts: list[RenderableType] = []
    for c in chains:
        ok = "[green]ok[/green]" if not c.problems else f"[red]{len(c.problems)} problem(s)[/red]"
        parts.append(Text.from_markup(f"[bold]{c.task}[/bold] (from {c.source}): {ok}"))
        parts.append(Text(f"  metrics     {_figures(c.metrics, limit=8) or 'none recorded'}"))
        for link in c.links:
            parts.append(Text(f"  -> {link.kind:<10} {link.ref}  {link.digest or '?'}"
                              + (f"  ({link.detail})" if link.detail else "")))
        parts.append(Text(f"  -> raw files  {c.raw_note}"))
        for f in c.raw_files[:20]:
            parts.append(Text(f"       {f.get('url')}  {f.get('size')} B  {f.get('sha256')}"))
        if len(c.raw_files) > 20:
            parts.append(Text(f"       ... {len(c.raw_files) - 20} more (see --json)"))
        for p in c.problems:
            parts.append(Text(f"  !! {p}", style="bold red"))
    return Group(*parts)
