"""Ingest throughput: the Spark ingest stages vs pyarrow alone, in one run.

For each modality this generates sample raw data (`pipeline.synth`), runs the real ingest
stage (strict decoding, normalization, validation, quarantine, HMAC tokens, deterministic
zstd Parquet, manifest) on local Spark, and next to it the baseline: the same files read
and written to Parquet with pyarrow alone, single-threaded. Figures are records/s per core
(Spark run divided by its cores; the baseline uses one). pyarrow's JSON reader cannot skip
a malformed line, so the baseline reads a copy of the JSONL files with the planted bad
lines removed: it does strictly less work than the stage.

    python bench/ingest.py                 # 100k documents, 1M transactions, 2k images
    python bench/ingest.py --quick         # a small smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def _clean_jsonl_copy(src: Path, dst: Path) -> list[Path]:
    """Copy JSONL files keeping only lines that parse as JSON objects (baseline input)."""
    out = []
    for path in sorted(src.rglob("*.jsonl")):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        with path.open("rb") as fin, target.open("wb") as fout:
            for line in fin:
                try:
                    if isinstance(json.loads(line.decode("utf-8")), dict):
                        fout.write(line)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
        out.append(target)
    return out


def _baseline(modality: str, raw: Path, work: Path) -> tuple[int, float]:
    """pyarrow alone: read the raw files, write one zstd Parquet file. (records, seconds)"""
    clean = work / "clean"
    work.mkdir(parents=True, exist_ok=True)
    jsonl = _clean_jsonl_copy(raw, clean) if modality != "images" else []
    read_opts = pajson.ReadOptions(use_threads=False, block_size=1 << 24)
    started = time.perf_counter()
    tables: list[pa.Table] = []
    if modality == "text":
        tables += [pajson.read_json(p, read_options=read_opts).select(["id", "text"])
                   for p in jsonl]
        txt = sorted(raw.rglob("*.txt"))
        texts = [p.read_bytes().decode("utf-8", errors="replace") for p in txt]
        tables.append(pa.table({"id": [p.name for p in txt], "text": texts}))
    elif modality == "transactions":
        skip = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")
        convert = pacsv.ConvertOptions(column_types={"card_number": pa.string(),
                                                     "account": pa.string(),
                                                     "amount": pa.string(),
                                                     "mcc": pa.string(),
                                                     "timestamp": pa.string(),
                                                     "is_fraud": pa.string()})
        for p in sorted(raw.rglob("*.csv")):
            tables.append(pacsv.read_csv(p, read_options=pacsv.ReadOptions(use_threads=False),
                                         parse_options=skip, convert_options=convert))
        for p in jsonl:
            t = pajson.read_json(p, read_options=read_opts)
            tables.append(t.cast(pa.schema([(f.name, pa.string()) for f in t.schema])))
        names = tables[0].schema.names
        tables = [t.select(names).cast(tables[0].schema) for t in tables]
    else:
        files = sorted(p for p in raw.rglob("*") if p.is_file())
        tables.append(pa.table({"path": [str(p) for p in files],
                                "bytes": [p.read_bytes() for p in files]}))
    table = pa.concat_tables(tables, promote_options="permissive")
    pq.write_table(table, work / "baseline.parquet", compression="zstd")
    return table.num_rows, time.perf_counter() - started


def _stage(modality: str, raw: Path, work: Path) -> tuple[int, float]:
    """The real ingest stage on local Spark. (input records, seconds excluding JVM start)"""
    from pipeline.config import config_from_dict
    from pipeline.ingest.stage import ingest_stage
    from pipeline.orchestrator import run_pipeline
    from pipeline.orchestrator.stages import synth_stage
    from pipeline.spark import get_spark

    cfg = config_from_dict({
        "run_id": f"bench-{modality}", "modalities": [modality],
        "storage": {"root": f"file://{work}"},
        "spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "6g"},
        "inputs": {modality: {"paths": [str(raw)]}},
    })
    get_spark(cfg.spark)  # start the JVM outside the timed region, as a cluster would be
    started = time.perf_counter()
    # synth is disabled (inputs are configured); listed so the stage graph is complete.
    outcome = run_pipeline(cfg, [synth_stage(), ingest_stage(modality)])[1]
    return outcome.rows["input"], time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--text-scale", type=float, default=100.0)
    parser.add_argument("--txn-scale", type=float, default=100.0)
    parser.add_argument("--image-scale", type=float, default=10.0)
    args = parser.parse_args()
    scales = {"text": args.text_scale, "transactions": args.txn_scale,
              "images": args.image_scale}
    if args.quick:
        scales = {"text": 2.0, "transactions": 2.0, "images": 1.0}
    from pipeline.synth import generate

    spark_cores = 2
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        for modality, scale in scales.items():
            raw = root / f"raw-{modality}"
            gt = generate(raw, scale=scale, seed=0, modalities=(modality,))
            n_stage, t_stage = _stage(modality, raw / modality, root / f"stage-{modality}")
            n_base, t_base = _baseline(modality, raw / modality, root / f"base-{modality}")
            ours = n_stage / t_stage / spark_cores
            base = n_base / t_base
            rows.append((modality, gt.n_records[modality], t_stage, ours, t_base, base))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import pyspark

    print(f"cores: stage local[{spark_cores}], baseline 1 thread | python "
          f"{platform.python_version()}, pyspark {pyspark.__version__}, pyarrow {pa.__version__}"
          f" | {os.cpu_count()} CPUs visible")
    header = (f"{'modality':<13}{'records':>10}{'stage s':>9}{'stage rec/s/core':>18}"
              f"{'pyarrow s':>11}{'pyarrow rec/s':>15}{'ratio':>8}")
    print(header)
    for modality, n, ts, ours, tb, base in rows:
        print(f"{modality:<13}{n:>10,}{ts:>9.1f}{ours:>18,.0f}{tb:>11.1f}{base:>15,.0f}"
              f"{ours / base:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
