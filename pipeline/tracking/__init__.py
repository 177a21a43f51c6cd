"""Experiment tracking and metrics: the places users already look (docs/tracking.md).

`Tracker` is the one interface the orchestrator calls: `stage_settled` after each stage
that ran or was found cached, `stage_failed` when one fails, `close` at the end. It fans
out to the targets `tracking.*` configures:

- MLflow (`tracking.mlflow_uri`, pipeline.tracking.mlflow): train and evaluate stages;
- Prometheus (`tracking.prometheus_textfile`, `tracking.pushgateway_url`,
  pipeline.tracking.prometheus): every stage's figures.

Tracking never fails a stage: a target that raises is warned about once (its URI with any
credential masked), switched off for the rest of the call, and the pipeline's own outputs
are complete regardless. A stage that is cached later is logged then (MLflow marks what it
logged, so nothing is logged twice).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.config import PipelineConfig, env_secret, to_dict
from pipeline.redact import redact_url
from pipeline.storage import Location, Manifest
from pipeline.tracking import prometheus

log = logging.getLogger(__name__)

__all__ = ["Tracker"]


def _masked(text: str) -> str:
    """An error message fit to print: credentials in any URL it quotes (`user:pw@`, a
    signed query) masked; clients quote the URL they failed to reach, credentials and all."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: redact_url(m.group(0)), text)


def _modality_of(stage: str) -> str:
    """The modality a stage name carries (`ingest/text` -> text), '' for synth/reports."""
    from pipeline import modalities

    _, _, tail = stage.partition("/")
    return tail if tail in modalities.names() else ""


class Tracker:
    """Reports the stages of one `pipeline run` call to the configured targets."""

    def __init__(self, cfg: PipelineConfig, run_id: str, code_version: str) -> None:
        t = cfg.tracking
        self.cfg = cfg
        self.run_id = run_id
        self.code_version = code_version
        self._figures: dict[str, prometheus.StageFigures] = {}
        self._mlflow: Any = None
        if t.mlflow_uri:
            from pipeline.tracking.mlflow import MlflowTarget

            self._mlflow = MlflowTarget(t.mlflow_uri, t.mlflow_experiment, t.mlflow_timeout_s)
        self._textfile = (prometheus.textfile_path(t.prometheus_textfile, run_id)
                          if t.prometheus_textfile else None)
        self._push_url = t.pushgateway_url or None

    @property
    def enabled(self) -> bool:
        return bool(self._mlflow or self._textfile or self._push_url)

    def stage_settled(self, stage: str, state: str, seconds: float, manifest: Manifest,
                      stage_dir: Location, config_slice: Callable[[], Any]) -> None:
        """A stage ran (and published `manifest`) or was cached: report it. Never raises.
        `config_slice` gives the stage's config slice (called only when MLflow logs it)."""
        if not self.enabled:
            return
        modality = _modality_of(stage)
        self._figures[stage] = prometheus.StageFigures(
            self.run_id, stage, modality, state, seconds, dict(manifest.row_counts),
            dict(manifest.extra), time.time() if state == "ran" else None)
        if self._mlflow is not None and modality and stage.split("/")[0] in ("train",
                                                                            "evaluate"):
            self._log_mlflow(stage, modality, manifest, stage_dir, config_slice)
        self._write_metrics()

    def stage_failed(self, stage: str, seconds: float) -> None:
        """A stage failed: its success gauge drops to 0. Never raises."""
        if not self.enabled:
            return
        self._figures[stage] = prometheus.StageFigures(self.run_id, stage, _modality_of(stage),
                                                       "failed", seconds)
        self._write_metrics()

    def _log_mlflow(self, stage: str, modality: str, manifest: Manifest, stage_dir: Location,
                    config_slice: Callable[[], Any]) -> None:
        target = self._mlflow
        try:
            history: Any = None
            if stage.startswith("train/"):
                history = _train_history(stage_dir)
            slice_ = to_dict(config_slice(), redact=True)
            mlflow_run = target.log_stage(
                run_id=self.run_id, stage=stage, modality=modality, manifest=manifest,
                stage_dir=stage_dir,
                config_slice=(slice_ if isinstance(slice_, Mapping)
                              else {stage.split("/")[0]: slice_}),
                code_version=self.code_version, history=history)
            log.info("%s logged to MLflow run %s at %s", stage, mlflow_run,
                     redact_url(target.uri))
        except Exception as exc:  # tracking never fails a stage
            self._mlflow = None
            log.warning("MLflow tracking at %s failed (%s: %s); MLflow logging is off for the "
                        "rest of this run, the pipeline's outputs are complete, and the next "
                        "`pipeline run` logs what was missed", redact_url(target.uri),
                        type(exc).__name__, _masked(str(exc))[:300])

    def _write_metrics(self) -> None:
        if not (self._textfile or self._push_url):
            return
        try:
            from pipeline import modalities

            registry = prometheus.registry_of(
                prometheus.metric_families(self._figures.values(), modalities.names()))
        except Exception as exc:
            log.warning("Prometheus metrics could not be built (%s: %s)", type(exc).__name__,
                        exc)
            self._textfile = self._push_url = None
            return
        if self._textfile is not None:
            try:
                prometheus.write_textfile(self._textfile, prometheus.exposition(registry))
            except Exception as exc:
                log.warning("Prometheus textfile %s could not be written (%s: %s); it is off "
                            "for the rest of this run", self._textfile, type(exc).__name__,
                            exc)
                self._textfile = None
        if self._push_url:
            t = self.cfg.tracking
            user, password = env_secret(t.pushgateway_username_env), env_secret(
                t.pushgateway_password_env)
            try:
                prometheus.push(self._push_url, t.pushgateway_job, {"run_id": self.run_id},
                                registry, t.pushgateway_timeout_s,
                                (user, password or "") if user else None)
            except Exception as exc:
                log.warning("Pushgateway %s did not take the metrics (%s: %s); pushing is off "
                            "for the rest of this run", redact_url(self._push_url),
                            type(exc).__name__, _masked(str(exc))[:300])
                self._push_url = None


def _train_history(stage_dir: Location) -> Any:
    """The per-epoch history rank 0 recorded, from the published result.json."""
    from pipeline.train.stage import read_train_result

    try:
        return read_train_result(stage_dir).get("history")
    except (OSError, ValueError) as exc:  # still worth logging the rest of the stage
        log.warning("%s: no per-epoch history for MLflow (%s)", stage_dir, exc)
        return None
