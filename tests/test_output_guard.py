"""A user-named output folder (`pipeline predict --output`) is replaced only when it holds
an earlier output of the same kind (issue 13, item 6)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from pipeline.evaluate.predict import check_output
from pipeline.storage import (
    MANIFEST_NAME,
    Location,
    OutputFolderError,
    StageWriter,
    check_replaceable,
    read_manifest,
)

pytestmark = pytest.mark.unit

STAGE = "predict/transactions"


@pytest.fixture(params=["file", "memory"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> Location:
    if request.param == "file":
        return Location(f"file://{tmp_path}")
    return Location(f"memory://guard-{uuid.uuid4().hex[:8]}")


def _publish(target: Location, stage: str = STAGE, payload: bytes = b"rows") -> None:
    writer = StageWriter(target, stage, guard_existing=True)
    with (writer.staging / "predictions/part-00000.bin").open("wb") as fh:
        fh.write(payload)
    writer.publish(row_counts={"predictions": len(payload)})


def test_folder_with_user_files_survives(root: Location) -> None:
    out = root / "out"
    (out / "notes.txt").write_bytes(b"my notes")
    with pytest.raises(OutputFolderError, match=r"notes\.txt.*no _MANIFEST\.json"):
        _publish(out)
    assert (out / "notes.txt").read_bytes() == b"my notes"
    assert [f.name for f in out.files()] == ["notes.txt"]


def test_earlier_output_of_the_same_stage_is_replaced(root: Location) -> None:
    out = root / "out"
    _publish(out, payload=b"first")
    _publish(out, payload=b"second run")
    assert (out / "predictions/part-00000.bin").read_bytes() == b"second run"
    assert read_manifest(out).row_counts == {"predictions": 10}


def test_missing_and_empty_folders_are_fine(tmp_path: Path) -> None:
    check_replaceable(Location(f"file://{tmp_path}/absent"), STAGE)
    (tmp_path / "empty").mkdir()
    _publish(Location(f"file://{tmp_path}/empty"))
    assert (tmp_path / "empty" / MANIFEST_NAME).is_file()


def test_other_outputs_and_extra_files_are_refused(root: Location) -> None:
    other = root / "other"
    _publish(other, stage="predict/images")
    with pytest.raises(OutputFolderError, match="output of predict/images, not of"):
        _publish(other)
    mixed = root / "mixed"
    _publish(mixed)
    (mixed / "notes.txt").write_bytes(b"added later")
    with pytest.raises(OutputFolderError, match=r"does not list \(notes\.txt\)"):
        _publish(mixed)
    assert (mixed / "notes.txt").read_bytes() == b"added later"
    with pytest.raises(OutputFolderError, match="is a file"):
        check_replaceable(mixed / "notes.txt", STAGE)


def test_folder_filled_while_the_stage_ran_is_refused_at_publish(tmp_path: Path) -> None:
    out = Location(f"file://{tmp_path}/out")
    writer = StageWriter(out, STAGE, guard_existing=True)
    (writer.staging / "predictions/part-00000.bin").write_bytes(b"rows")
    (out / "notes.txt").write_bytes(b"written meanwhile")
    with pytest.raises(OutputFolderError):
        writer.publish()
    assert (tmp_path / "out" / "notes.txt").read_bytes() == b"written meanwhile"


def test_output_overlapping_the_input_is_refused(tmp_path: Path) -> None:
    data = Location(f"file://{tmp_path}/table")
    (data / "part-0.parquet").write_bytes(b"x")
    for output in (data, data.parent, data / "preds"):
        with pytest.raises(OutputFolderError, match="overlaps --input"):
            check_output(data, output, "transactions")
    table_file = data / "part-0.parquet"
    with pytest.raises(OutputFolderError, match="overlaps --input"):
        check_output(table_file, data, "transactions")
    check_output(data, Location(f"file://{tmp_path}/table-preds"), "transactions")


def test_predict_command_refuses_before_any_work(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """No model exists here: the refusal comes before the checkpoint is even looked up."""
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"txn_id": ["t1"]}), source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code = main(["predict", "--modality", "transactions", "--input", str(source), "--output",
                 str(out), "--set", f"storage.root=file://{tmp_path}/root"])
    assert code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "refused" in err and "notes.txt" in err and "not an output of" in err
    assert (out / "notes.txt").read_text() == "keep me"
    assert code == main(["predict", "--modality", "transactions", "--input", str(source),
                         "--output", str(tmp_path), "--set",
                         f"storage.root=file://{tmp_path}/root"])
    assert source.is_file()
