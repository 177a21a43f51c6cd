"""The `evaluate` and `predict` commands; pipeline/cli.py calls `add_commands(sub)`.

    pipeline evaluate [--config YAML] [--set k=v] [--run-id ID] [--modality M ...]
    pipeline predict --modality M --input URL --output URL [--checkpoint URL]

The modalities offered are the registered ones with a model (pipeline.modalities);
`--task` is accepted as an older spelling of `--modality`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def evaluated_modalities() -> tuple[str, ...]:
    """The registered modalities that have a model to evaluate."""
    from pipeline import modalities

    return tuple(s.name for s in modalities.specs() if s.evaluation is not None)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="YAML",
                   help="configuration file (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting by dotted key; repeatable")
    p.add_argument("--run-id", help="run id (default: config run_id, else 'local')")


def _load(args: argparse.Namespace) -> Any:
    from pipeline.config import load_config

    overrides = list(args.overrides)
    if args.run_id:
        overrides.append(f"run_id={args.run_id}")
    return load_config(args.config, overrides)


def evaluate_stages(names: Sequence[str]) -> list[Any]:
    """The evaluate stages of the modalities `names`, in order (their upstream stages must
    be published: the runner takes `train/<m>` and `dedup/<m>` from the run's manifests)."""
    from pipeline.evaluate.stage import evaluate_stage

    return [evaluate_stage(m) for m in names]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluate stages of a run (cached ones are skipped) and print their figures."""
    from pipeline.orchestrator import run_pipeline

    cfg = _load(args)
    evaluated = evaluated_modalities()
    names = args.modality or [m for m in cfg.modalities if m in evaluated]
    outcomes = run_pipeline(cfg, evaluate_stages(names))
    for o in outcomes:
        print(f"{o.name}: {o.state} {o.summary}".rstrip())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score a Parquet table and print the published result as JSON."""
    from dataclasses import asdict

    from pipeline.evaluate.predict import predict_table

    result = predict_table(_load(args), args.modality, args.input, args.output,
                           args.checkpoint)
    print(json.dumps(asdict(result), indent=2))
    return 0


def _required(spec: Any) -> str:
    """'<modality>: <id>, <features> (<label> optional)' for the help text."""
    ev = spec.evaluation
    label = f" ({ev.label_column} optional)" if ev.label_column else ""
    return f"{spec.name}: {', '.join((spec.id_column, *ev.feature_columns))}{label}"


def add_commands(sub: Any) -> None:
    """Add `evaluate` and `predict` to an argparse subparsers object."""
    from pipeline import modalities

    names = evaluated_modalities()
    columns = "; ".join(_required(modalities.get(m)) for m in names)
    p = sub.add_parser(
        "evaluate", help="score trained models on the test split, write reports, check gates",
        description="Run the evaluate/<modality> stages of a run: load the best checkpoint "
        "of train/<modality> (refused if it was trained on other data or its files do not "
        "match their digests), score the test split through a Ray Data pool of model "
        "actors, publish metrics.json and report.html in evaluate/<modality>, and fail with "
        "the metric, value and threshold when a gate (gates.*) is not met (the report is "
        "then written to reports/failed/evaluate_<modality>.html). Needs published "
        "dedup/<modality> and train/<modality> stages (pipeline run).")
    _config_args(p)
    p.add_argument("--modality", "--task", action="append", choices=names,
                   help="only these modalities (repeatable; default: the config's "
                   "modalities)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict", help="batch inference: score a Parquet table with a trained model",
        description="Score every row of a Parquet file or folder with a trained model and "
        "publish predictions/part-00000.parquet plus a _MANIFEST.json recording the model "
        f"checkpoint, its digest, and the input's URL and digest. Required columns: "
        f"{columns}.")
    _config_args(p)
    p.add_argument("--modality", "--task", required=True, choices=names, help="which model")
    p.add_argument("--input", required=True, metavar="URL",
                   help="Parquet file or folder (any fsspec URL or local path)")
    p.add_argument("--output", required=True, metavar="URL",
                   help="folder to publish the predictions in: a new or empty folder, or "
                   "an earlier predict output of the same modality (replaced atomically); "
                   "any other folder, or one overlapping --input, is refused")
    p.add_argument("--checkpoint", metavar="URL",
                   help="checkpoint folder (default: the run's best train/<modality> checkpoint)")
    p.set_defaults(func=cmd_predict)
