"""`pipeline` command line: every stage of the pipeline, and the whole run."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.markup import escape

from pipeline.config import ConfigError, PipelineConfig, load_config, to_dict
from pipeline.logs import console, setup_logging

DESCRIPTION = """\
A distributed data-and-training pipeline. Spark jobs ingest raw text, images and
transactions, validate and deduplicate them into Parquet; Ray Train trains PyTorch models on
that Parquet; an evaluation stage scores them. Every stage publishes its output atomically
with a _MANIFEST.json, so re-runs skip finished work.

Start with `pipeline run` (sample data, local Spark, local Ray), then point a config at your
own data: `pipeline run --config configs/example.yaml --set train.epochs=3`.
"""

EPILOG = """\
configuration: YAML (see configs/example.yaml) plus --set KEY=VALUE overrides, e.g.
  --set storage.root=s3://bucket/pipeline --set train.scaling.num_workers=4
Every problem in a configuration is reported at once, before any Spark or Ray work starts.
Secrets (HMAC key, Ray token, cloud credentials) come from environment variables only.
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="YAML", help="configuration file (default: built-in"
                   " defaults, sample data under ./data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting by dotted key; repeatable")
    p.add_argument("--run-id", help="run id (default: config run_id, else 'local')")


def _load(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "run_id", None):
        overrides.append(f"run_id={args.run_id}")
    return load_config(args.config, overrides)


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synth import MODALITIES, generate

    modalities = args.modality or list(MODALITIES)
    with console.status(f"generating sample data (scale {args.scale}, seed {args.seed})"):
        gt = generate(args.out, scale=args.scale, seed=args.seed, modalities=modalities)
    for modality in modalities:
        console.print(f"{modality:>13}: {gt.n_records[modality]:>9,} raw records, "
                      f"{gt.n_bad[modality]:>6,} planted bad")
    console.print(f"ground truth: {args.out}/ground_truth.json")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps(to_dict(cfg, redact=True), indent=2))
    return 0


def _run_stages(cfg: PipelineConfig, stages: list[Any] | None = None) -> int:
    from rich.table import Table

    from pipeline.orchestrator import run_pipeline
    from pipeline.orchestrator.runner import run_id_of
    from pipeline.storage import RunPaths

    outcomes = run_pipeline(cfg, stages)
    table = Table(title=f"run {run_id_of(cfg)}")
    for column in ("stage", "state", "seconds", "summary"):
        table.add_column(column)
    for o in outcomes:
        table.add_row(o.name, o.state, f"{o.seconds:.1f}", o.summary)
    console.print(table)
    if all(o.state != "ran" for o in outcomes):
        console.print("nothing to do: every stage is up to date")
    paths = RunPaths(cfg.storage.root, run_id_of(cfg))
    console.print(f"run state: {paths.run_json}")
    console.print(f"reports:   {paths.reports}/ (dedup/dedup.html, train_<task>.json)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    return _run_stages(_load(args))


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.ingest.stage import ingest_stage
    from pipeline.orchestrator.stages import synth_stage

    cfg = _load(args)
    modalities = args.modality or list(cfg.modalities)
    return _run_stages(cfg, [synth_stage(), *(ingest_stage(m) for m in modalities)])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage (skipping cached ones) and print a summary",
                       description="Run the pipeline's stages in order. A stage whose cache key "
                       "(code version, its config, its inputs' manifests) is unchanged is "
                       "skipped; a stage that changed re-runs with everything after it.")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ingest", help="validate raw files into curated Parquet + quarantine "
                       "(Spark)", description="Read raw text (JSONL, .txt), images (class "
                       "folders) and transactions (CSV, JSONL) with Spark, normalize and validate "
                       "them, and publish curated and quarantine Parquet with a manifest under "
                       "<storage.root>/runs/<run_id>/ingest/<modality>/. Every input record is "
                       "either curated or quarantined with a reason code. Sample data is "
                       "generated first when a modality has no inputs.*.paths.")
    _add_config_args(p)
    p.add_argument("--modality", action="append", choices=["text", "images", "transactions"],
                   help="only these modalities (repeatable; default: config modalities)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("synth", help="write sample raw data with planted duplicates and bad "
                       "records", description="Write realistic raw inputs for all three "
                       "modalities (JSONL/.txt text, image folders, CSV/JSONL transactions) and "
                       "ground_truth.json describing every planted duplicate and bad record. The "
                       "same seed and scale give byte-identical files.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scale", type=float, default=1.0,
                   help="size multiplier: 1.0 is ~1k documents, ~200 images, ~10k transactions")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--modality", action="append", choices=["text", "images", "transactions"],
                   help="only these modalities (repeatable; default all)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("config", help="validate a configuration and print it resolved",
                       description="Load YAML + overrides, report every problem at once, and "
                       "print the resolved configuration with secrets redacted.")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        console.print(f"[red]configuration error[/red]: {escape(str(exc))}", highlight=False)
        return 2
    except Exception as exc:
        from pipeline.orchestrator import StageFailed

        if isinstance(exc, StageFailed):
            console.print(f"[red]failed[/red]: {escape(str(exc))}", highlight=False)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
