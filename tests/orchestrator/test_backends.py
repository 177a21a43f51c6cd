"""Stage backends (a spark-submit and a Ray job against real clusters, compared with a
local run: tests/cluster/test_backends_cluster.py): jobs never carry secrets; the Ray
backend refuses an unauthenticated non-local cluster; a job rebuilds its stage from the
stage's factory reference, and a stage without one never runs as a job (nor silently in
this process instead)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import ConfigError, PipelineConfig, config_from_dict
from pipeline.ingest.stage import ingest_stage
from pipeline.orchestrator import (
    NoFactoryError,
    Stage,
    StageContext,
    StageResult,
    run_pipeline,
)
from pipeline.orchestrator.backend_ray import (
    InsecureJobAddressError,
    is_local_address,
    job_runtime_env,
    run_ray_job,
    submission_token,
)
from pipeline.orchestrator.backends import backend_of
from pipeline.orchestrator.job import (
    JobSpecError,
    job_argv,
    main,
    make_spec,
    read_spec,
    run_job,
    shippable_config,
    write_spec,
)
from pipeline.orchestrator.package import build_bundle, package_files
from pipeline.orchestrator.stages import synth_stage
from pipeline.storage import Location, RunPaths, code_version, is_published

FAKE_KEY = "fake-hmac-key-4f9d2c71e0b8"
FAKE_TOKEN = "fake-ray-token-8a61c3d5b2f9"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # One bundle cache per test session, away from the user's ~/.cache.
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bundles"))


def _cfg(root: Path, **extra: Any) -> PipelineConfig:
    return config_from_dict({"run_id": "t", "storage": {"root": f"file://{root}"},
                             "modalities": ["transactions"], "synth": {"scale": 0.2},
                             "spark": {"shuffle_partitions": 2, **extra.pop("spark", {})},
                             **extra})


def _no_spark() -> Any:
    raise AssertionError("this test needs no Spark")


def _ctx(cfg: PipelineConfig, root: Path) -> StageContext:
    run = RunPaths(cfg.storage.location, "t")
    return StageContext(cfg, run, run.stage("_staging/x-0123456789ab"), {}, _no_spark)


@pytest.mark.unit
@pytest.mark.parametrize(("address", "local"), [
    ("http://127.0.0.2:8265", True), ("127.0.0.1:8265", True), ("http://localhost:8265", True),
    ("http://[::1]:8265", True), ("ray://127.9.0.1:10001", True),
    ("http://10.0.0.5:8265", False), ("https://ray.example.com", False),
    ("http://128.0.0.1:8265", False), ("", False)])
def test_local_addresses(address: str, local: bool) -> None:
    assert is_local_address(address) is local


@pytest.mark.unit
def test_non_local_job_address_without_token_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ray={"backend": "job", "job_address": "http://10.1.2.3:8265"})
    with pytest.raises(InsecureJobAddressError) as err:
        submission_token(cfg.ray, {})
    message = str(err.value)
    assert "10.1.2.3" in message and "RAY_AUTH_TOKEN" in message and "token" in message
    # Refused before anything is written or contacted.
    with pytest.raises(InsecureJobAddressError):
        run_ray_job(train_like(), _ctx(cfg, tmp_path), environ={})
    assert not (tmp_path / "runs").exists()
    # With the token configured it is allowed, and locally the token is passed when set.
    assert submission_token(cfg.ray, {"RAY_AUTH_TOKEN": FAKE_TOKEN}) == FAKE_TOKEN
    local = _cfg(tmp_path, ray={"backend": "job", "job_address": "http://127.0.0.2:8265"})
    assert submission_token(local.ray, {}) is None
    assert submission_token(local.ray, {"RAY_AUTH_TOKEN": FAKE_TOKEN}) == FAKE_TOKEN


def train_like() -> Stage:
    from pipeline.train.stage import train_stage

    return train_stage("transactions")


@pytest.mark.unit
def test_ray_runtime_env_carries_only_whitelisted_non_secrets(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, ray={"backend": "job", "job_address": "http://127.0.0.2:8265",
                              "job_env_vars": ["MY_SETTING"]})
    environ = {"PIPELINE_HMAC_KEY": FAKE_KEY, "RAY_AUTH_TOKEN": FAKE_TOKEN,
               "AWS_SECRET_ACCESS_KEY": "aws-secret", "PYTHONHASHSEED": "0",
               "PIPELINE_LOG_LEVEL": "DEBUG", "MY_SETTING": "on", "HOME": "/home/x"}
    env = job_runtime_env(cfg.ray, build_bundle(), environ)
    assert env["env_vars"] == {"PYTHONHASHSEED": "0", "PIPELINE_LOG_LEVEL": "DEBUG",
                               "MY_SETTING": "on", "COLUMNS": "400"}
    text = json.dumps(env)
    for secret in (FAKE_KEY, FAKE_TOKEN, "aws-secret"):
        assert secret not in text
    # Nothing but the entry point and the package is uploaded: no data/, .venv, .git.
    uploaded = [p for d in (env["working_dir"], *env["py_modules"]) for p in Path(d).rglob("*")]
    assert {p.name for p in uploaded if p.is_file() and p.parent.name == "jobs"} == {"stage.py"}
    assert not [p for p in uploaded if {".git", ".venv", "data", "__pycache__"} & set(p.parts)]


@pytest.mark.unit
def test_secret_looking_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, ray={"job_env_vars": ["PIPELINE_HMAC_KEY", "RAY_AUTH_TOKEN"]},
             spark={"submit_args": ["--master", "yarn"]})
    assert len(err.value.problems) == 3
    assert any("ray.job_env_vars: PIPELINE_HMAC_KEY" in p for p in err.value.problems)
    assert any("spark.submit_args: --master" in p for p in err.value.problems)
    leaky = _cfg(tmp_path, storage={"root": f"file://{tmp_path}",
                                    "options": {"secret_access_key": "s3cr3t"}})
    with pytest.raises(JobSpecError, match=r"storage\.options\.secret_access_key"):
        shippable_config(leaky)


@pytest.mark.unit
def test_bundle_is_deterministic_and_is_the_running_code(tmp_path: Path) -> None:
    first, second = build_bundle(tmp_path / "a"), build_bundle(tmp_path / "b")
    assert first.zip_path.read_bytes() == second.zip_path.read_bytes()
    assert build_bundle(tmp_path / "a") == first  # cached: built once per code version
    import pipeline

    src = Path(pipeline.__file__).parent
    with zipfile.ZipFile(first.zip_path) as zf:
        names = zf.namelist()
    assert names == [f"pipeline/{p.relative_to(src).as_posix()}" for p in package_files(src)]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # Imported from the zip, the package has the same code version (cache keys agree).
    out = subprocess.run([sys.executable, "-c", "import pipeline, pipeline.storage as s; "
                          "print(pipeline.__file__); print(s.code_version())"],
                         env={"PYTHONPATH": str(first.zip_path), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    file_line, version_line = out.stdout.split()
    assert file_line.startswith(str(first.zip_path))
    assert version_line == code_version() == first.version


@pytest.mark.unit
def test_dispatch_by_kind_and_config(tmp_path: Path) -> None:
    ingest, train = ingest_stage("transactions"), train_like()
    local = _ctx(_cfg(tmp_path), tmp_path)
    assert backend_of(ingest, local) == backend_of(train, local) == "local"
    jobs = _ctx(_cfg(tmp_path, spark={"backend": "spark-submit"},
                     ray={"backend": "job", "job_address": "http://127.0.0.2:8265"}), tmp_path)
    assert backend_of(ingest, jobs) == "spark-submit"
    assert backend_of(train, jobs) == "ray-job"
    assert backend_of(synth_stage(), jobs) == "local"
    custom = Stage(name="custom", run=lambda ctx: StageResult(), config_of=lambda c: 0,
                   kind="spark")
    assert backend_of(custom, local) == "local"  # no job: no factory needed
    with pytest.raises(NoFactoryError, match=r"stage custom \(spark\) must run as a "
                                             r"spark-submit job .*needs a factory reference"):
        backend_of(custom, jobs)


@pytest.mark.unit
def test_stage_without_factory_under_spark_submit_fails_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No silent local run: the run refuses to start, naming the stage and the fix."""
    ran: list[str] = []

    def first(ctx: StageContext) -> StageResult:
        ran.append("first")
        return StageResult()

    stages = [Stage(name="first", run=first, config_of=lambda c: 0),
              Stage(name="custom", run=lambda ctx: pytest.fail("ran locally"),
                    config_of=lambda c: 0, inputs=("first",), kind="spark")]
    cfg = _cfg(tmp_path, spark={"backend": "spark-submit", "submit_master": "local[1]"})
    with pytest.raises(NoFactoryError, match=r"stage custom .*needs a factory reference to "
                                             "run as a job"):
        run_pipeline(cfg, stages)
    assert ran == [] and not is_published(RunPaths(cfg.storage.location, "t").stage("first"))
    # Under the local backend the same stages run in this process.
    ok = replace(stages[1], run=lambda ctx: StageResult(summary="local"))
    assert [o.state for o in run_pipeline(_cfg(tmp_path), [stages[0], ok])] == ["ran", "ran"]
    # `pipeline run` says it cannot run (exit 2), as for a selection it cannot honour.
    import pipeline.graph
    from pipeline.cli import main as cli_main

    monkeypatch.setattr(pipeline.graph, "default_stages", lambda: stages)
    ran.clear()
    assert cli_main(["run", "--set", f"storage.root=file://{tmp_path}/cli", "--set",
                     "spark.backend=spark-submit"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "cannot run: stage custom (spark) must run as a spark-submit job" in err
    assert ran == []


def _one(ctx: StageContext) -> StageResult:
    (ctx.output / "out.txt").write_bytes(ctx.cfg.run_id.encode())
    return StageResult(row_counts={"rows": 1}, extra={"loss": float("nan"), "t": (1, 2)},
                       summary="1 row")


def _one_stage(name: str = "one") -> Stage:
    return Stage(name=name, run=_one, config_of=lambda c: 0, kind="spark",
                 factory="fake_stage_factories:one_stage", args=(name,))


@pytest.fixture
def fake_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module a job can import the stage factory from (tests are not importable)."""
    module = types.ModuleType("fake_stage_factories")
    module.one_stage = _one_stage  # type: ignore[attr-defined]
    module.renamed = lambda name: _one_stage("other")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_stage_factories", module)


@pytest.mark.unit
def test_job_side_rebuilds_the_stage_from_its_factory_and_checks_its_inputs(
        tmp_path: Path, fake_factories: None) -> None:
    stage = _one_stage()
    cfg = _cfg(tmp_path, storage={"root": f"file://{tmp_path}",
                                  "options": {"auto_mkdir": True}})
    spec = make_spec(stage, _ctx(cfg, tmp_path))
    assert (spec.stage, spec.factory, spec.args) == ("one", "fake_stage_factories:one_stage",
                                                     ("one",))
    assert spec.attempt == "0123456789ab"
    assert spec.result_url.endswith("/runs/t/_jobs/one/0123456789ab.json")
    # The root's URL and options travel; the job rebuilds the run layout from them.
    assert spec.run == RunPaths(cfg.storage.location, "t")
    url = write_spec(spec)
    assert read_spec(Location(url)) == spec
    argv = job_argv(spec, url)
    assert argv[:3] == ["--spec", url, "--storage-options"]
    assert json.loads(argv[3]) == dict(cfg.storage.options) == dict(spec.options)
    assert job_argv(replace(spec, options={}), url) == ["--spec", url]
    result = run_job(spec)
    assert result.row_counts == {"rows": 1} and result.extra["t"] == [1, 2]
    assert spec.result.read_json()["summary"] == "1 row"
    assert (spec.staging / "out.txt").read_bytes() == b"t"
    stale = replace(spec, code_version="0.0.0+000000000000")
    with pytest.raises(JobSpecError, match="differs from the orchestrator"):
        run_job(stale)


@pytest.mark.unit
def test_job_spec_with_unknown_factory_is_refused(tmp_path: Path, fake_factories: None,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spec = make_spec(_one_stage(), _ctx(_cfg(tmp_path), tmp_path))
    for factory, args, why in [
            ("pipeline.nowhere:one_stage", ("one",), "cannot be called here"),
            ("fake_stage_factories:missing", ("one",), "cannot be called here"),
            ("fake_stage_factories:renamed", ("one",), "built 'other', not the stage 'one'"),
            ("", (), "names no factory")]:
        with pytest.raises(JobSpecError, match=why):
            run_job(replace(spec, factory=factory, args=args))
    assert not spec.result.exists()  # refused before running anything
    # The job's entry point exits 2 with the reason, as for any bad spec.
    url = write_spec(replace(spec, factory="pipeline.nowhere:one_stage"))
    assert main(["--spec", url]) == 2
    assert "job spec error: stage 'one': factory pipeline.nowhere:one_stage" in \
        capsys.readouterr().err
    with pytest.raises(JobSpecError, match="has no factory reference"):
        make_spec(replace(_one_stage(), factory=""), _ctx(_cfg(tmp_path), tmp_path))
