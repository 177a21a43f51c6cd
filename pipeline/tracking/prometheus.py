"""Every stage's figures as Prometheus metrics: a node_exporter textfile and a Pushgateway.

The figures come from what a stage published (its manifest's row counts and extra, as the
runner's `StageOutcome` carries them), so a cached stage reports the same figures as the
call that ran it. Names follow Prometheus' conventions (snake_case, unit suffix, `_total`
for counts); every sample carries `run_id`, `stage` and `modality` (empty for stages of no
modality: synth, the reports). The table of names is in docs/tracking.md.

The textfile is written whole each time (temporary file in the same folder, then rename:
node_exporter never reads half a file). A push is an HTTP PUT of the same exposition text to
`<pushgateway>/metrics/job/<job>/run_id/<run id>`: the run's group is replaced, so a re-run
leaves no stale series. A label value that carries a credential is masked (`***`).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.redact import secret_value

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

__all__ = ["StageFigures", "exposition", "metric_families", "push", "registry_of",
           "textfile_path", "write_textfile"]

#: labels every sample carries, in this order
BASE_LABELS = ("run_id", "stage", "modality")
#: history/metric values at or above this are placeholders, never figures
_PLACEHOLDER = 1e29


@dataclass(frozen=True)
class StageFigures:
    """What one stage of a run reports: its state and what its manifest holds."""

    run_id: str
    stage: str
    modality: str
    state: str  # "ran" | "cached" | "failed"
    seconds: float = 0.0
    rows: Mapping[str, int] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)
    finished: float | None = None  # Unix time the stage published (ran in this call)


@dataclass
class _Family:
    name: str
    kind: str  # "counter" | "gauge"
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


#: (name without _total, type, help, extra label): the stable set of metric names
FAMILIES: tuple[tuple[str, str, str, str | None], ...] = (
    ("pipeline_stage_rows", "counter",
     "Rows a stage counted, by kind (input, curated, kept, duplicates, quarantined, ...)",
     "kind"),
    ("pipeline_stage_quarantined_rows", "counter", "Rows a stage quarantined, by reason code",
     "reason"),
    ("pipeline_stage_duplicate_rows", "counter", "Rows dedup marked duplicate, by rule", "rule"),
    ("pipeline_stage_split_rows", "counter", "Kept rows per split (train, val, test)", "split"),
    ("pipeline_stage_files", "counter", "Raw files an ingest stage read, rejected or excluded",
     "kind"),
    ("pipeline_stage_duration_seconds", "gauge",
     "Wall-clock seconds the stage ran in this call (absent when cached)", None),
    ("pipeline_stage_success", "gauge", "1 when the stage is done (ran or cached), 0 when failed",
     None),
    ("pipeline_stage_cached", "gauge", "1 when the stage was cached in this call, else 0", None),
    ("pipeline_stage_last_success_timestamp_seconds", "gauge",
     "Unix time the stage published its output (stages that ran in this call)", None),
    ("pipeline_train_epochs", "counter", "Epochs the model trained", None),
    ("pipeline_train_samples_per_second", "gauge",
     "Training throughput of the last epoch, all workers", None),
    ("pipeline_train_loss", "gauge", "Loss of the last epoch, by split (train, val)", "split"),
    ("pipeline_train_best_val_loss", "gauge", "Lowest validation loss of the retained checkpoints",
     None),
    ("pipeline_evaluate_metric", "gauge",
     "Evaluation headline figures (accuracy, pr_auc, bits_per_byte, ...), by metric", "metric"),
)


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) and abs(v) < _PLACEHOLDER else None


def _label(value: str) -> str:
    return "***" if secret_value(value) else value


def metric_families(figures: Iterable[StageFigures],
                    modalities: Sequence[str] = ()) -> list[_Family]:
    """The metric families of the stages given (pure: no I/O), in the FAMILIES order.

    A stage of no modality that counts per modality (`transactions.records` of synth,
    `text.kept` of the dedup report) reports each under that `modality` label, by the
    key's first word when it is one of `modalities`."""
    fams: dict[str, _Family] = {}
    for name, kind, help_, extra in FAMILIES:
        full = f"{name}_total" if kind == "counter" else name
        fams[name] = _Family(full, kind, help_, BASE_LABELS + ((extra,) if extra else ()))

    for f in figures:
        base = (_label(f.run_id), f.stage, f.modality)

        def add(name: str, value: Any, *extra: str, _base: tuple[str, ...] = base) -> None:
            v = _finite(value)
            if v is not None:
                fams[name].samples.append((_base + tuple(_label(e) for e in extra), v))

        add("pipeline_stage_success", 0.0 if f.state == "failed" else 1.0)
        if f.state == "failed":
            if f.seconds:
                add("pipeline_stage_duration_seconds", f.seconds)
            continue
        add("pipeline_stage_cached", 1.0 if f.state == "cached" else 0.0)
        if f.state == "ran":
            add("pipeline_stage_duration_seconds", f.seconds)
            if f.finished is not None:
                add("pipeline_stage_last_success_timestamp_seconds", f.finished)
        train = f.stage.startswith("train/")
        for key, count in sorted(f.rows.items()):
            prefix, _, rest = key.partition(".")
            if not f.modality and rest and prefix in modalities:
                of = (_label(f.run_id), f.stage, prefix)
                add("pipeline_stage_rows", count, rest, _base=of)
            elif train and key == "epochs":
                add("pipeline_train_epochs", count)
            elif rest and prefix == "quarantined":
                add("pipeline_stage_quarantined_rows", count, rest)
            elif rest and prefix == "duplicates":
                add("pipeline_stage_duplicate_rows", count, rest)
            elif rest and prefix == "split":
                add("pipeline_stage_split_rows", count, rest)
            elif rest and prefix == "files":
                add("pipeline_stage_files", count, rest)
            else:
                add("pipeline_stage_rows", count, key)
        if train:
            final = f.extra.get("final_metrics") or {}
            if isinstance(final, Mapping):
                add("pipeline_train_samples_per_second", final.get("samples_per_s"))
                add("pipeline_train_loss", final.get("train_loss"), "train")
                add("pipeline_train_loss", final.get("val_loss"), "val")
            add("pipeline_train_best_val_loss", f.extra.get("best_val_loss"))
        if f.stage.startswith("evaluate/"):
            metrics = f.extra.get("metrics") or {}
            if isinstance(metrics, Mapping):
                for key, value in sorted(metrics.items()):
                    add("pipeline_evaluate_metric", value, str(key))
    return list(fams.values())


def registry_of(families: Sequence[_Family]) -> CollectorRegistry:
    """A prometheus_client registry serving `families` as they are (families without
    samples are left out)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    built: list[Metric] = []
    for fam in families:
        if not fam.samples:
            continue
        cls = CounterMetricFamily if fam.kind == "counter" else GaugeMetricFamily
        metric = cls(fam.name, fam.help, labels=list(fam.labels))
        for values, value in fam.samples:
            metric.add_metric(list(values), value)
        built.append(metric)

    class _Snapshot(Collector):
        def collect(self) -> Iterable[Metric]:
            return built

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return registry


def exposition(registry: CollectorRegistry) -> str:
    """The text exposition format (0.0.4) of `registry`."""
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def textfile_path(setting: str, run_id: str) -> Path:
    """The file `tracking.prometheus_textfile` names: itself when it ends in .prom, else
    `<folder>/pipeline_<run id>.prom` (node_exporter reads every *.prom of its folder)."""
    path = Path(setting.removeprefix("file://")).expanduser()
    return path if path.suffix == ".prom" else path / f"pipeline_{run_id}.prom"


def write_textfile(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file in the same folder, then
    rename, so node_exporter never reads a half-written file (its collector reads only
    *.prom files, so the temporary name is never read either)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # node_exporter usually runs as another user
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def push(url: str, job: str, grouping: Mapping[str, str], registry: CollectorRegistry,
         timeout_s: float, auth: tuple[str, str] | None = None) -> None:
    """PUT the metrics of `registry` to the Pushgateway at `url`, replacing the group `job`
    + `grouping`; raises OSError (urllib's URLError/HTTPError) when it fails."""
    from prometheus_client import exposition as pe

    def handler(url: str, method: str, timeout: float | None, headers: list[tuple[str, str]],
                data: bytes) -> Callable[[], None]:
        if auth is not None:
            return pe.basic_auth_handler(url, method, timeout, headers, data, auth[0], auth[1])
        return pe.default_handler(url, method, timeout, headers, data)

    pe.push_to_gateway(url, job, registry, grouping_key=dict(grouping), timeout=timeout_s,
                       handler=handler)
