"""Where a run lives: a relative local storage.root is resolved once, at config load, so a
job that runs in another directory (a Ray job's working_dir) finds the same run; and
`pipeline plan` says where that is, readable at 80 columns (issue 13, items 15 and 16)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.cli import main
from pipeline.config import config_from_dict, load_config
from pipeline.orchestrator.display import plan_table
from pipeline.orchestrator.job import make_spec, read_spec, write_spec
from pipeline.orchestrator.plan import PlanEntry, run_paths
from pipeline.orchestrator.stages import Stage, StageContext, StageResult
from pipeline.storage import Location

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("root", ["file://./data", "data", "./nested/../data"])
def test_relative_local_root_is_made_absolute_at_load(root: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [f"storage.root={root}"])
    assert cfg.storage.root == f"file://{tmp_path}/data"
    assert config_from_dict({}).storage.root == f"file://{tmp_path}/data"  # the default
    for other in ("s3://bucket/runs", "memory://x", f"file://{tmp_path}/abs"):
        assert load_config(None, [f"storage.root={other}"]).storage.root == other


def _no_spark() -> None:
    raise AssertionError("no Spark here")


def test_job_spec_for_a_ray_job_carries_an_absolute_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["ray.backend=job", "ray.job_address=http://127.0.0.2:8265",
                             "run_id=cl"])  # storage.root: the default file://./data
    run = run_paths(cfg)
    stage = Stage(name="train/text", run=lambda ctx: StageResult(), config_of=lambda c: {},
                  kind="ray", factory="pipeline.train.stage:train_stage", args=("text",))
    ctx = StageContext(cfg, run, run.stage("train/_staging/text-0123456789ab"), {}, _no_spark)
    spec_url = write_spec(make_spec(stage, ctx))
    body = json.loads(Location(spec_url).read_bytes())
    assert body["root"] == f"file://{tmp_path}/data"
    assert body["config"]["storage"]["root"] == f"file://{tmp_path}/data"
    # The job runs in its own working directory (runtime_resources/.../_ray_pkg_*).
    elsewhere = tmp_path / "working_dir_files" / "_ray_pkg_0"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    spec = read_spec(Location(spec_url))
    job_cfg = config_from_dict(spec.config)
    assert run_paths(job_cfg).stage("dedup/text").url == \
        f"file://{tmp_path}/data/runs/cl/dedup/text"


def _render(entries: list[PlanEntry], width: int) -> list[str]:
    console = Console(width=width, file=io.StringIO(), force_terminal=False,
                      color_system=None)
    console.print(plan_table("r1", entries, run_url="file:///data/runs/r1", width=width))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return text.splitlines()


REASONS = [
    "not selected; published output is out of date (code version changed "
    "(0.1.0+0123456789ab -> 0.1.0+ba9876543210)) but is used as is",
    "will run: upstream dedup/text, dedup/images and 1 more re-run",
    "input dedup/transactions was never published: select it too "
    "(e.g. --from dedup/transactions)",
]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_plan_reason_is_readable_at_any_width(width: int) -> None:
    entries = [PlanEntry(f"evaluate/transactions{i}", "unselected", reason)
               for i, reason in enumerate(REASONS)]
    lines = _render(entries, width)
    assert all(len(line) <= width for line in lines)
    body = [line for line in lines if line.startswith("│")]
    cells = [re.split(r"\s*│\s*", line.strip("│ ")) for line in body]
    text = " ".join(" ".join(c for c in row if c) for row in cells)
    for reason in REASONS:
        # every word of the reason is shown, in order
        assert re.search(r"\s+".join(map(re.escape, reason.split())), text), reason
    # No one-word-per-line squeeze: the reasons take few lines, most lines hold several words.
    reason_words = {w for r in REASONS for w in r.split()}
    reason_lines = [c for row in cells for c in row
                    if c and set(c.split()) <= reason_words and not c.startswith("evaluate/")]
    assert len(reason_lines) <= 3 * len(REASONS) + 2
    assert sum(len(c.split()) >= 3 for c in reason_lines) >= len(reason_lines) - len(REASONS)
    assert any("run folder: file:///data/runs/r1" in line for line in lines)


def test_plan_command_says_where_the_run_lives(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plan", "--run-id", "r9", "--only", "synth"]) == 0
    out = capsys.readouterr().out
    assert "run folder:" in out
    assert f"file://{tmp_path}/data/runs/r9" in "".join(out.split())
