"""The `evaluate` and `predict` commands; pipeline/cli.py calls `add_commands(sub)`.

    pipeline evaluate [--config YAML] [--set k=v] [--run-id ID] [--task T ...]
    pipeline predict --task T --input URL --output URL [--checkpoint URL]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

TASKS = ("text", "images", "transactions")


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


def evaluate_stages(tasks: Sequence[str]) -> list[Any]:
    """The evaluate stages of `tasks`, in order (their upstream stages must be published:
    the runner takes `train/<task>` and `dedup/<task>` from the run's manifests)."""
    from pipeline.evaluate.stage import evaluate_stage

    return [evaluate_stage(t) for t in tasks]


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluate stages of a run (cached ones are skipped) and print their figures."""
    from pipeline.orchestrator import run_pipeline

    cfg = _load(args)
    tasks = args.task or [t for t in cfg.modalities if t in TASKS]
    outcomes = run_pipeline(cfg, evaluate_stages(tasks))
    for o in outcomes:
        print(f"{o.name}: {o.state} {o.summary}".rstrip())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Score a Parquet table and print the published result as JSON."""
    from dataclasses import asdict

    from pipeline.evaluate.predict import predict_table

    result = predict_table(_load(args), args.task, args.input, args.output, args.checkpoint)
    print(json.dumps(asdict(result), indent=2))
    return 0


def add_commands(sub: Any) -> None:
    """Add `evaluate` and `predict` to an argparse subparsers object."""
    p = sub.add_parser(
        "evaluate", help="score trained models on the test split, write reports, check gates",
        description="Run the evaluate/<task> stages of a run: load the best checkpoint of "
        "train/<task> (refused if it was trained on other data or its files do not match "
        "their digests), score the test split through a Ray Data pool of model actors, "
        "write metrics.json and reports/evaluate_<task>.html, and fail with the metric, "
        "value and threshold when a gate (gates.*) is not met. Needs published dedup/<task> "
        "and train/<task> stages (pipeline run).")
    _config_args(p)
    p.add_argument("--task", action="append", choices=TASKS,
                   help="only these tasks (repeatable; default: the config's modalities)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "predict", help="batch inference: score a Parquet table with a trained model",
        description="Score every row of a Parquet file or folder with a trained model and "
        "publish predictions/part-00000.parquet plus a _MANIFEST.json recording the model "
        "checkpoint, its digest, and the input's URL and digest. Required columns: text: "
        "doc_id, text; images: image_id, bytes (label optional); transactions: txn_id, "
        "amount, ts, mcc, country, currency, velocity_1h, velocity_24h (is_fraud optional).")
    _config_args(p)
    p.add_argument("--task", required=True, choices=TASKS, help="which model")
    p.add_argument("--input", required=True, metavar="URL",
                   help="Parquet file or folder (any fsspec URL or local path)")
    p.add_argument("--output", required=True, metavar="URL",
                   help="folder to publish the predictions in (replaced atomically)")
    p.add_argument("--checkpoint", metavar="URL",
                   help="checkpoint folder (default: the run's best train/<task> checkpoint)")
    p.set_defaults(func=cmd_predict)
