from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import build_parser, main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("command", [[], ["run"], ["plan"], ["status"], ["lineage"], ["synth"],
                                     ["ingest"], ["config"]])
def test_help_explains(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: pipeline" in out
    assert len(out) > 300  # explains, not just lists flags


def test_console_script_runs() -> None:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "pipeline"), "--help"], capture_output=True,
                            text=True, check=True)
    assert "Spark" in result.stdout and "Ray" in result.stdout


def test_config_errors_exit_2_with_every_problem(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epoch: 3\nsplit:\n  train: 2\ndedup:\n  bands: x\n")
    assert main(["config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    for key in ("train.epoch", "split.train", "dedup.bands"):
        assert key in err


def test_config_prints_resolved_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "storage.options={aws_secret_access_key: s3cr3t}",
                 "--set", "train.epochs=4"]) == 0
    out = capsys.readouterr().out
    assert '"epochs": 4' in out and "s3cr3t" not in out


def test_run_help_documents_selection_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--from S", "--until S", "--only S", "--dry-run"):
        assert flag in out
    assert "130 interrupted" in out and "_LOCK" in out


def test_unknown_stage_exits_2_listing_valid_ones(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--set", f"storage.root=file://{tmp_path}", "--only", "trains"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "unknown stage 'trains'" in err and "train/text" in err and "dedup/images" in err


def test_modality_choices_come_from_the_registry() -> None:
    from dataclasses import replace

    from pipeline import modalities

    ledger = replace(modalities.get("transactions"), name="ledger")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ingest", "--modality", "ledger"])
    with modalities.registered(ledger):
        assert build_parser().parse_args(["ingest", "--modality", "ledger"]).modality == [
            "ledger"]
        args = build_parser().parse_args(["synth", "--out", "x", "--modality", "ledger"])
        assert args.modality == ["ledger"]
