"""`pipeline` command line: every stage of the pipeline, and the whole run."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.markup import escape

from pipeline.config import ConfigError, PipelineConfig, load_config, to_dict
from pipeline.logs import console, setup_logging

if TYPE_CHECKING:
    from pipeline.orchestrator.stages import Stage

log = logging.getLogger(__name__)

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


def _add_config_args(p: argparse.ArgumentParser, run_id: bool = True) -> None:
    p.add_argument("--config", "-c", metavar="YAML", help="configuration file (default: built-in"
                   " defaults, sample data under ./data)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting by dotted key; repeatable")
    if run_id:
        p.add_argument("--run-id", help="run id (default: config run_id, else 'local')")


def _load(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if getattr(args, "run_id", None):
        overrides.append(f"run_id={args.run_id}")
    return load_config(args.config, overrides)


def _synth_modalities() -> list[str]:
    """The registered modalities that can generate sample data, in registry order."""
    from pipeline import modalities

    return [spec.name for spec in modalities.specs() if spec.synth is not None]


def cmd_synth(args: argparse.Namespace) -> int:
    from pipeline.synth import generate

    modalities = args.modality or _synth_modalities()
    with console.status(f"generating sample data (scale {args.scale}, seed {args.seed})"):
        gt = generate(args.out, scale=args.scale, seed=args.seed, modalities=modalities)
    for modality in modalities:
        console.print(f"{modality:>13}: {gt.n_records[modality]:>9,} raw records, "
                      f"{gt.n_bad[modality]:>6,} planted bad")
    console.print(f"ground truth: {args.out}/ground_truth.json")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the detection report and a YAML inputs block for files never described."""
    from pipeline.inspect import inspect

    sys.stdout.write(inspect(args.paths, args.modality))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    print(json.dumps(to_dict(cfg, redact=True), indent=2))
    return 0


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("stage selection", "S is a stage name (train/text) or a group "
                             "(train = every train/* stage). Stages outside the selection "
                             "do not run; their published outputs feed the selected ones.")
    g.add_argument("--from", dest="from_stage", metavar="S",
                   help="run S and every stage after it in graph order")
    g.add_argument("--until", metavar="S", help="run every stage up to and including S")
    g.add_argument("--only", action="append", default=[], metavar="S",
                   help="run just S (repeatable); not combinable with --from/--until")


def _selection(stages: list[Stage], args: argparse.Namespace) -> list[str] | None:
    from pipeline.orchestrator.selection import select

    if not (args.from_stage or args.until or args.only):
        return None
    return select([s.name for s in stages], args.from_stage, args.until, args.only)


def _show_plan(cfg: PipelineConfig, stages: list[Stage], selected: list[str] | None,
               as_json: bool = False) -> int:
    from pipeline.orchestrator.display import out, plan_footer, plan_table
    from pipeline.orchestrator.plan import plan, run_id_of, run_paths

    entries = plan(cfg, stages, selected)
    if as_json:
        print(json.dumps([e.to_dict() for e in entries], indent=2, sort_keys=True))
    else:
        out.print(plan_table(run_id_of(cfg), entries, run_url=run_paths(cfg).run_url,
                             width=out.width))
        out.print(plan_footer(entries), soft_wrap=True)
    # Exit as `pipeline run` would before starting: 2 when a selected stage is blocked.
    return 2 if any(e.decision == "blocked" for e in entries) else 0


def _run_stages(cfg: PipelineConfig, stages: list[Stage],
                selected: list[str] | None = None) -> int:
    from pipeline.orchestrator import run_pipeline
    from pipeline.orchestrator.display import RichProgress, out, summary_table
    from pipeline.orchestrator.plan import run_id_of, run_paths

    run_id = run_id_of(cfg)
    with RichProgress(f"run {run_id}") as progress:
        outcomes = run_pipeline(cfg, stages, selected=selected, progress=progress)
    out.print(summary_table(run_id, outcomes))
    ran = sum(o.state == "ran" for o in outcomes)
    if not ran:
        which = "selected stage" if selected is not None else "stage"
        out.print(f"nothing to do: every {which} is up to date")
    else:
        cached = sum(o.state == "cached" for o in outcomes)
        out.print(f"{ran} stage(s) ran, {cached} cached", soft_wrap=True)
    paths = run_paths(cfg)
    # The reports of every stage of this call whose output is published (ran, cached, or
    # not selected), main report first, as the stages' manifests list them.
    reports = list(dict.fromkeys(u for o in outcomes for u in o.reports))
    # soft_wrap: paths stay whole (copyable) instead of being cut at the console width.
    out.print(f"run state: {paths.run_json}", soft_wrap=True)
    out.print(f"reports:   {paths.reports}/" + "".join(f"\n  {u}" for u in reports),
              soft_wrap=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.graph import default_stages

    cfg = _load(args)
    stages = default_stages()
    selected = _selection(stages, args)
    if args.dry_run:
        return _show_plan(cfg, stages, selected)
    return _run_stages(cfg, stages, selected)


def cmd_plan(args: argparse.Namespace) -> int:
    from pipeline.graph import default_stages

    cfg = _load(args)
    stages = default_stages()
    return _show_plan(cfg, stages, _selection(stages, args), args.json)


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.orchestrator.display import out, status_view
    from pipeline.orchestrator.status import run_status

    cfg = _load(args)
    st = run_status(cfg.storage.location, args.run, cfg.orchestrator.lock_stale_s)
    if args.json:
        print(json.dumps(st.to_dict(), indent=2, sort_keys=True, default=str))
    else:
        out.print(status_view(st), soft_wrap=True)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from pipeline.orchestrator.display import lineage_view, out
    from pipeline.orchestrator.lineage import lineage
    from pipeline.orchestrator.status import RunNotFoundError

    cfg = _load(args)
    try:
        chains = lineage(cfg.storage.location, args.run)
    except FileNotFoundError:
        raise RunNotFoundError(f"no run {args.run!r} under {cfg.storage.root}") from None
    if args.json:
        print(json.dumps([c.to_dict() for c in chains], indent=2, sort_keys=True, default=str))
    else:
        out.print(lineage_view(chains), soft_wrap=True)
    # A broken chain means the metrics do not describe this run's data: say so in the code.
    return 1 if any(c.problems for c in chains) else 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pipeline.graph import ingest_stages

    cfg = _load(args)
    return _run_stages(cfg, ingest_stages(args.modality or list(cfg.modalities)))


def _modality_names() -> list[str]:
    from pipeline import modalities

    return list(modalities.names())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run every stage (skipping cached ones) and print a summary",
                       description="Run the pipeline's stages in graph order, holding the "
                       "run's lock (<run>/_LOCK) so no other process runs the same run id. A "
                       "stage whose cache key (code version, its config, its inputs' "
                       "manifests) is unchanged is skipped; a stage that changed re-runs with "
                       "everything after it. A run interrupted anywhere resumes at the "
                       "interrupted stage (training from its last checkpoint). Transient "
                       "errors (lost connections, timeouts, dead Ray workers) are retried "
                       "with capped exponential backoff (orchestrator.max_attempts). Exit "
                       "codes: 0 ok, 1 a stage failed or the run is locked, 2 bad "
                       "configuration or selection, 130 interrupted.",
                       epilog="examples:\n  pipeline run --dry-run\n"
                       "  pipeline run --from train --set train.epochs=3\n"
                       "  pipeline run --only dedup/text --only reports/dedup",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    _add_selection_args(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (what would run and why) and run nothing")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("plan", help="show what `pipeline run` would do, and why",
                       description="For every stage: whether it is cached, will run, is "
                       "disabled, not selected, or blocked (an input was never published), "
                       "the reason (no published output, config changed, input X changed, "
                       "code version changed, interrupted stage will resume, upstream X "
                       "re-runs), and the size of its inputs (files, bytes, rows) from their "
                       "manifests. Reads run.json and manifests only; runs nothing.")
    _add_config_args(p)
    _add_selection_args(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON on stdout")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="show a run's stage states, durations, figures, reports",
                       description="Read <storage.root>/runs/RUN/run.json and the stages' "
                       "manifests (no Spark or Ray is started) and print each stage's state "
                       "(done, running, failed with its error, interrupted), seconds, "
                       "attempts, key figures (row counts; metrics of evaluate and train "
                       "stages), the lock holder if the run is in progress, and where the "
                       "reports are.")
    p.add_argument("run", metavar="RUN", help="run id")
    _add_config_args(p, run_id=False)
    p.add_argument("--json", action="store_true", help="print the status as JSON on stdout")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("lineage", help="trace each metric back to raw files, by digest",
                       description="For every evaluate/<task> stage (or train/<task> when "
                       "there is no evaluation), print metric -> checkpoint (URL, model "
                       "digest) -> data the checkpoint was trained on (checked against the "
                       "published dedup manifest) -> dedup manifest -> ingest manifest -> raw "
                       "files (sha256 each, or a listing digest). A link that does not match "
                       "what is published is reported with MISMATCH and the command exits 1.")
    p.add_argument("run", metavar="RUN", help="run id")
    _add_config_args(p, run_id=False)
    p.add_argument("--json", action="store_true", help="print the chains as JSON on stdout")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("ingest", help="validate raw files into curated Parquet + quarantine "
                       "(Spark)", description="Read raw text (JSONL, .txt), images (class "
                       "folders) and transactions (CSV, JSONL) with Spark, normalize and validate "
                       "them, and publish curated and quarantine Parquet with a manifest under "
                       "<storage.root>/runs/<run_id>/ingest/<modality>/. Every input record is "
                       "either curated or quarantined with a reason code. Sample data is "
                       "generated first when a modality has no inputs.*.paths.")
    _add_config_args(p)
    p.add_argument("--modality", action="append", choices=_modality_names(),
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
    p.add_argument("--modality", action="append", choices=_synth_modalities(),
                   help="only these modalities (repeatable; default all)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("config", help="validate a configuration and print it resolved",
                       description="Load YAML + overrides, report every problem at once, and "
                       "print the resolved configuration with secrets redacted.")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("inspect", help="detect the layout of files never described and print "
                       "a ready-to-paste inputs.<modality> block",
                       description="Read a sample of PATH... and print what was detected "
                       "(format, delimiter, header, encoding, row estimate, column types, "
                       "likely roles) as YAML comments, then an inputs.<modality> block; the "
                       "output is valid YAML. '# unsure:' marks guesses to check.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    p.add_argument("--modality", choices=("text", "images", "transactions"),
                   help="force the modality (default: detected)")
    p.set_defaults(func=cmd_inspect)

    from pipeline.evaluate.cli import add_commands

    add_commands(sub)  # evaluate, predict
    return parser


def _fail(label: str, exc: BaseException, code: int) -> int:
    console.print(f"[red]{label}[/red]: {escape(str(exc))}", highlight=False)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, and turn every failure into a message + exit code."""
    from pipeline.orchestrator import NoFactoryError, RunLockedError, SelectionError, StageFailed
    from pipeline.orchestrator.status import RunNotFoundError
    from pipeline.storage import OutputFolderError

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        return _fail("configuration error", exc, 2)
    except (SelectionError, NoFactoryError) as exc:
        return _fail("cannot run", exc, 2)
    except OutputFolderError as exc:
        return _fail("refused", exc, 2)
    except StageFailed as exc:
        return _fail("failed", exc, 1)
    except RunLockedError as exc:
        return _fail("locked", exc, 1)
    except RunNotFoundError as exc:
        return _fail("not found", exc, 1)
    except KeyboardInterrupt as exc:
        # RunInterrupted names the stage; a bare Ctrl-C (planning, Spark start) does not.
        return _fail("interrupted", exc if str(exc) else RuntimeError("by the user"), 130)
    except Exception as exc:
        log.debug("unexpected error", exc_info=True)
        return _fail("error", RuntimeError(f"{type(exc).__name__}: {exc} (run with "
                                           "--log-level DEBUG for the traceback)"), 1)


if __name__ == "__main__":
    sys.exit(main())
