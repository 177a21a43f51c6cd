"""Train and evaluate stages as MLflow runs: one MLflow run per pipeline run and modality.

The `train/<m>` and `evaluate/<m>` stages of one model log into the same MLflow run, found
(or created) by its tags: `pipeline.run_id`, `pipeline.modality` and
`pipeline.train_manifest` (the digest of the train stage's manifest, which the evaluate
stage lists among its inputs). A model trained again (new config, data or code) is a new
MLflow run (MLflow params cannot change); the same model seen again (a cached stage, a
resumed run, a second `pipeline run`) is the same run. Each stage's logging ends with the
tag `pipeline.logged.<train|evaluate>` set to the stage's manifest digest: a stage already
logged is not logged twice (no doubled metric points), and a stage whose logging failed
(server down) is logged by the next call that sees it, cached or not.

What is logged (docs/tracking.md): the stage's config slice as params (redacted, flattened
to dotted keys), the per-epoch history of rank 0 (`result.json`, written by rank 0 after
training) with step = epoch, the evaluation metrics, the stage's reports and manifest as
artifacts under `<stage>/`, and tags leading back to lineage (run id, code version, data
content digest, checkpoint and its digest). Nothing that carries a credential is logged.

`mlflow` (or `mlflow-skinny`) is imported only when `tracking.mlflow_uri` is set.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.redact import redact_url, secret_key, secret_value
from pipeline.storage import MANIFEST_NAME, Location, Manifest

if TYPE_CHECKING:
    from mlflow import MlflowClient

__all__ = ["MlflowTarget", "flat_params", "history_metrics", "safe_uri", "tracking_uri"]

#: MLflow's limits on a param value and a tag value
_PARAM_MAX = 6000
_TAG_MAX = 8000
#: history values at or above this are placeholders (pipeline.train.UNVALIDATED_LOSS)
_PLACEHOLDER = 1e29
TAG_PREFIX = "pipeline."


def safe_uri(uri: str) -> str:
    """The tracking URI fit for a log line: a password or a signed query masked."""
    return redact_url(uri)


def tracking_uri(setting: str) -> tuple[str, str | None]:
    """(MLflow tracking URI, artifact location for a new experiment) of
    `tracking.mlflow_uri`. A local folder (a path or file:// URL) becomes an SQLite store
    `<folder>/mlflow.db` with artifacts in `<folder>/artifacts` (MLflow 3 refuses its old
    file store); any other URI (http(s)://, sqlite:///, databricks) is MLflow's own."""
    if "://" in setting and not setting.startswith("file://"):
        return setting, None
    folder = Path(setting.removeprefix("file://")).expanduser().resolve()
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def _clean(key: str, value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    named = secret_key(key.rsplit(".", 1)[-1]) and text not in ("", "null")
    return "***" if named or secret_value(text) else text[:limit]


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A (redacted) config slice as MLflow params: nested keys joined with '.', lists and
    other values as JSON, anything that names or carries a credential as `***`."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = _clean(name, value, _PARAM_MAX)
    return out


def history_metrics(history: Any) -> list[tuple[str, float, int]]:
    """(key, value, step) of each per-epoch figure: step = the epoch number (1-based);
    placeholders and non-finite values are left out."""
    out: list[tuple[str, float, int]] = []
    if not isinstance(history, (list, tuple)):
        return out
    for index, entry in enumerate(history):
        if not isinstance(entry, Mapping):
            continue
        step = int(entry.get("epoch", index + 1))
        for key, value in sorted(entry.items()):
            if key in ("epoch", "step") or isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                continue
            v = float(value)
            if math.isfinite(v) and abs(v) < _PLACEHOLDER:
                out.append((str(key), v, step))
    return out


def _numbers(metrics: Any, prefix: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        return {}
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            v = float(value)
            if math.isfinite(v) and abs(v) < _PLACEHOLDER:
                out[f"{prefix}{key}"] = v
    return out


class MlflowTarget:
    """Logs train and evaluate stages to the MLflow tracking server or store at `uri`."""

    def __init__(self, uri: str, experiment: str, timeout_s: float) -> None:
        # A dead server must cost seconds, not MLflow's default minutes of retries; a value
        # the user set in the environment wins.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, math.ceil(timeout_s))))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        self.uri, self.artifact_location = tracking_uri(uri)
        self.experiment = experiment
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            if self.artifact_location is not None:  # a local store: its folder may be new
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True,
                                                                      exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        if self._experiment_id is None:
            client = self.client()
            found = client.get_experiment_by_name(self.experiment)
            self._experiment_id = (
                found.experiment_id if found is not None
                else client.create_experiment(self.experiment,
                                              artifact_location=self.artifact_location))
        return self._experiment_id

    def find_run(self, run_id: str, modality: str, train_manifest: str) -> str | None:
        """The MLflow run id of this model, or None."""
        want = {"run_id": run_id, "modality": modality, "train_manifest": train_manifest}
        query = " and ".join(f"tags.`{TAG_PREFIX}{k}` = '{v}'" for k, v in want.items())
        runs = self.client().search_runs([self.experiment_id()], filter_string=query,
                                         max_results=1, order_by=["attributes.start_time ASC"])
        return runs[0].info.run_id if runs else None

    def log_stage(self, *, run_id: str, stage: str, modality: str, manifest: Manifest,
                  stage_dir: Location, config_slice: Mapping[str, Any], code_version: str,
                  history: Any = None) -> str:
        """Log one train or evaluate stage; returns the MLflow run id. Raises on failure
        (the caller warns)."""
        kind = stage.split("/", 1)[0]
        train_manifest = (manifest.digest if kind == "train"
                          else str(manifest.inputs.get(f"train/{modality}", "")))
        client = self.client()
        mlflow_run = self.find_run(run_id, modality, train_manifest)
        if mlflow_run is None:
            created = client.create_run(
                self.experiment_id(), run_name=f"{run_id}/{modality}",
                tags={f"{TAG_PREFIX}run_id": run_id, f"{TAG_PREFIX}modality": modality,
                      f"{TAG_PREFIX}train_manifest": train_manifest})
            mlflow_run = created.info.run_id
        done_tag = f"{TAG_PREFIX}logged.{kind}"
        if client.get_run(mlflow_run).data.tags.get(done_tag) == manifest.digest:
            return mlflow_run  # this very stage output is logged already
        self._log(client, mlflow_run, kind, manifest, stage_dir, config_slice, code_version,
                  history)
        client.set_tag(mlflow_run, done_tag, manifest.digest)
        client.set_terminated(mlflow_run, "FINISHED")
        return mlflow_run

    def _log(self, client: MlflowClient, mlflow_run: str, kind: str, manifest: Manifest,
             stage_dir: Location, config_slice: Mapping[str, Any], code_version: str,
             history: Any) -> None:
        from mlflow.entities import Metric, Param, RunTag

        extra = manifest.extra
        now = int(time.time() * 1000)
        params = flat_params(config_slice)
        metrics: list[Metric] = []
        tags = {f"{TAG_PREFIX}code_version": code_version,
                f"{TAG_PREFIX}{kind}_manifest": manifest.digest,
                f"{TAG_PREFIX}{kind}_content_digest": manifest.content_digest}
        if data := extra.get("data_digest"):
            tags[f"{TAG_PREFIX}data_digest"] = str(data)
        if kind == "train":
            metrics += [Metric(k, v, now, step) for k, v, step in history_metrics(history)]
            metrics += [Metric(k, v, now, 0) for k, v in
                        _numbers({"best_val_loss": extra.get("best_val_loss")}, "").items()]
            if ckpt := extra.get("best_checkpoint"):
                tags[f"{TAG_PREFIX}checkpoint"] = redact_url(str(ckpt))
        else:
            metrics += [Metric(k, v, now, 0) for k, v in
                        _numbers(extra.get("metrics"), "eval_").items()]
            if digest := extra.get("checkpoint_digest"):
                tags[f"{TAG_PREFIX}checkpoint_digest"] = str(digest)
            if ckpt := extra.get("checkpoint"):
                tags[f"{TAG_PREFIX}checkpoint"] = redact_url(str(ckpt))
        safe_tags = {k: _clean(k, v, _TAG_MAX) for k, v in tags.items()}
        # MLflow takes at most 100 params / 1000 metrics per batch call.
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):
            client.log_batch(mlflow_run, params=items[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(mlflow_run, metrics=metrics[i:i + 1000])
        client.log_batch(mlflow_run, tags=[RunTag(k, v) for k, v in sorted(safe_tags.items())])
        self._log_files(client, mlflow_run, manifest, stage_dir)

    @staticmethod
    def _log_files(client: MlflowClient, mlflow_run: str, manifest: Manifest,
                   stage_dir: Location) -> None:
        """The stage's reports and its manifest, copied to a local folder first (the stage
        may live in an object store) and logged under `<stage>/`."""
        from pipeline.orchestrator.reports import report_files

        with tempfile.TemporaryDirectory(prefix="pipeline-mlflow-") as tmp:
            for rel in [*report_files(manifest), MANIFEST_NAME]:
                target = Path(tmp, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((stage_dir / rel).read_bytes())
            client.log_artifacts(mlflow_run, tmp, artifact_path=manifest.stage)
