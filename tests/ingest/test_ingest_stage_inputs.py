"""Configured inputs through ingest -> dedup: 100%-clean and 100%-bad inputs of every
modality publish valid (possibly empty) tables and reconcile; every file found under a
configured path is read, rejected (UNSUPPORTED_FILE) or excluded, and the manifest says so;
and the train stage of a run with nothing left refuses its empty split with the counts."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from pipeline.config import PipelineConfig, config_from_dict
from pipeline.dedup.stage import dedup_stage
from pipeline.ingest.stage import ingest_stage
from pipeline.orchestrator import StageFailed, run_pipeline
from pipeline.orchestrator.stages import synth_stage
from pipeline.storage import Location, RunPaths, verify_stage
from pipeline.train.stage import EmptySplitError, check_train_split, train_stage

pytestmark = pytest.mark.integration

MODALITIES = ("text", "images", "transactions")
HEADER = b"txn_id,account,card_number,amount,currency,timestamp,merchant,mcc,country,is_fraud\n"


def _png(seed: int) -> bytes:
    from PIL import Image

    rng = random.Random(seed)
    im = Image.new("RGB", (24, 24))
    im.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256))
                for _ in range(24 * 24)])
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def _write(root: Path, clean: bool) -> None:
    text, images, txns = root / "text", root / "images", root / "transactions"
    for folder in (text, images / "cat", images / "dog", txns):
        folder.mkdir(parents=True)
    if clean:
        for i, doc in enumerate(("The quick brown fox jumps over the lazy dog.",
                                 "Colorless green ideas sleep furiously tonight.",
                                 "A journey of a thousand miles begins with one step.")):
            # Compressed files read transparently (issue 12.3), in each modality that may be.
            name, data = (f"doc{i}.txt.bz2", bz2.compress(doc.encode())) if i else \
                (f"doc{i}.txt", doc.encode())
            (text / name).write_bytes(data)
        for i, label in enumerate(("cat", "cat", "dog")):
            (images / label / f"{i}.png").write_bytes(_png(i))
        rows = [f"t{i},acc{i},4111111111111111,{10 + i}.50,USD,2024-01-0{i + 1}T00:00:00Z,"
                f"shop{i},5411,US,{i % 2}\n".encode() for i in range(3)]
        (txns / "t.csv.gz").write_bytes(gzip.compress(HEADER + b"".join(rows)))
        return
    (text / "a.jsonl").write_bytes(b'{"text": "x"\n[1]\n{"body": 1}\n')
    (text / "w.txt").write_bytes(b"caf\xe9")
    (images / "cat" / "0.png").write_bytes(b"not a png")
    (images / "dog" / "1.png").write_bytes(_png(1)[:40])
    (txns / "t.csv").write_bytes(HEADER + b"t1,acc,4111111111111112,1.00,USD,"
                                 b"2024-01-01T00:00:00Z,s,5411,US,0\nbroken\n")
    # Not records: rejected as UNSUPPORTED_FILE, or excluded by a rule the manifest names.
    (text / "notes.md").write_text("# notes")
    (text / ".hidden.jsonl").write_text('{"text": "hidden"}\n')
    (text / "_SUCCESS").write_text("")
    # (a PPM is an image format now, and a JPEG named .svg is read by its content)
    (images / "cat" / "scan.svg").write_bytes(b'<svg xmlns="http://www.w3.org/2000/svg"/>')
    (images / "dog" / "thumbs.db").write_bytes(b"\x00")
    (txns / "skip.csv").write_bytes(HEADER)


def _cfg(root: Path, clean: bool) -> PipelineConfig:
    return config_from_dict({
        "run_id": "r", "storage": {"root": f"file://{root}/out"}, "modalities": MODALITIES,
        "spark": {"shuffle_partitions": 2},
        "inputs": {m: {"paths": [str(root / m)]} for m in MODALITIES}
        | {"transactions": {"paths": [str(root / "transactions")], "exclude": ["skip.*"]}},
        "gates": {"max_quarantine_rate": 1.0} if not clean else {},
    })


@pytest.fixture(scope="module")
def hmac_key() -> Iterator[None]:
    old = os.environ.get("PIPELINE_HMAC_KEY")
    os.environ["PIPELINE_HMAC_KEY"] = "test-key-for-configured-inputs"
    yield
    if old is None:
        del os.environ["PIPELINE_HMAC_KEY"]
    else:
        os.environ["PIPELINE_HMAC_KEY"] = old


def _run(root: Path, clean: bool) -> RunPaths:
    _write(root, clean)
    stages = [synth_stage(), *(s for m in MODALITIES for s in (ingest_stage(m), dedup_stage(m)))]
    outcomes = run_pipeline(_cfg(root, clean), stages)
    assert [o.state for o in outcomes] == ["skipped"] + ["ran"] * (len(stages) - 1), outcomes
    return RunPaths(Location(f"{root}/out"), "r")


def _rows(stage: Location, folder: str) -> int:
    files = sorted(Path(stage.path, folder).glob("*.parquet"))
    assert files, f"{stage}/{folder} holds no Parquet file"
    return sum(pq.read_table(f).num_rows for f in files)


def test_clean_inputs_publish_empty_quarantines(spark: Any, hmac_key: None,
                                                tmp_path: Path) -> None:
    """Issue 12.1: zero quarantined rows crashed ingest (PATH_NOT_FOUND .../quarantine)."""
    run = _run(tmp_path, clean=True)
    for m in MODALITIES:
        ingest = verify_stage(run.stage(f"ingest/{m}"))
        assert ingest.row_counts["input"] == ingest.row_counts["curated"] == 3, m
        assert ingest.row_counts["quarantined"] == 0
        assert _rows(run.stage(f"ingest/{m}"), "quarantine") == 0
        dedup = verify_stage(run.stage(f"dedup/{m}")).row_counts
        assert dedup["input"] == dedup["kept"] + dedup["duplicates"] + dedup["quarantined"]
        assert _rows(run.stage(f"dedup/{m}"), "duplicates") == dedup["duplicates"]


def test_bad_inputs_publish_empty_curated_and_account_for_every_file(
        spark: Any, hmac_key: None, tmp_path: Path) -> None:
    run = _run(tmp_path, clean=False)
    want = {"text": (5, {"files.read": 2, "files.rejected": 1, "files.excluded": 2,
                         "files.excluded.hidden": 1, "files.excluded.underscore": 1}),
            "images": (4, {"files.read": 2, "files.rejected": 2, "files.excluded": 0}),
            "transactions": (2, {"files.read": 1, "files.rejected": 0, "files.excluded": 1,
                                 "files.excluded.exclude:skip.*": 1})}
    for m, (n_input, files) in want.items():
        stage = run.stage(f"ingest/{m}")
        counts = verify_stage(stage).row_counts
        assert counts["input"] == counts["quarantined"] == n_input, (m, counts)
        assert counts["curated"] == 0 and _rows(stage, "curated") == 0
        assert {k: v for k, v in counts.items() if k.startswith("files.")} == files, m
        assert counts.get("quarantined.UNSUPPORTED_FILE", 0) == files["files.rejected"]
        dedup = verify_stage(run.stage(f"dedup/{m}")).row_counts
        assert dedup["input"] == dedup["kept"] == dedup["duplicates"] == 0, (m, dedup)
        assert _rows(run.stage(f"dedup/{m}"), "data") == 0
    # The run goes on to training, which stops with the split counts (nothing to retry).
    cfg = _cfg(tmp_path, clean=False)
    for m in MODALITIES:
        with pytest.raises(StageFailed) as failed:
            run_pipeline(cfg, [train_stage(m)])
        assert isinstance(failed.value.__cause__, EmptySplitError), m
        assert re.search(r"train split is empty \(train 0, val 0, test 0; dedup kept 0 of 0",
                         str(failed.value)), str(failed.value)


@pytest.mark.unit
def test_training_needs_a_train_split() -> None:
    check_train_split("text", {"split.train": 5, "kept": 5, "input": 5})
    with pytest.raises(EmptySplitError, match="train 0, val 2, test 1; dedup kept 3 of 9"):
        check_train_split("text", {"split.val": 2, "split.test": 1, "kept": 3, "input": 9})
