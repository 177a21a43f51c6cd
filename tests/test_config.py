from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from pipeline.config import (
    REDACTED,
    ConfigError,
    PipelineConfig,
    config_from_dict,
    load_config,
    to_dict,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_valid() -> None:
    cfg = load_config(None)
    # Only the relative default root differs: it is resolved at load (issue 13, item 15).
    default = PipelineConfig()
    assert cfg == dataclasses.replace(default, storage=dataclasses.replace(
        default.storage, root=f"file://{Path.cwd().resolve()}/data"))
    assert cfg.split.train + cfg.split.val + cfg.split.test == pytest.approx(1.0)


def test_zero_workers_is_ray_train_local_mode() -> None:
    assert config_from_dict({"train": {"scaling": {"num_workers": 0}}}).train.scaling \
        .num_workers == 0


def test_example_config_loads() -> None:
    cfg = load_config(ROOT / "configs" / "example.yaml")
    assert cfg.train.epochs >= 1
    assert isinstance(cfg.inputs.text.paths, tuple)


def test_overrides_parse_like_yaml() -> None:
    cfg = config_from_dict({}, ["train.epochs=3", "dedup.verify=false", "train.text.lr=1e-4",
                                "inputs.text.paths=[a.jsonl, b.jsonl]", "ray.num_cpus=null"])
    assert cfg.train.epochs == 3
    assert cfg.dedup.verify is False
    assert cfg.train.text.lr == pytest.approx(1e-4)
    assert cfg.inputs.text.paths == ("a.jsonl", "b.jsonl")
    assert cfg.ray.num_cpus is None


def test_three_mistakes_reported_together(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "train:\n  epoch: 3\n"          # unknown key (typo)
        "dedup:\n  num_perm: lots\n"    # wrong type
        "spark:\n  shuffle_partitions: 4\n"
        "split:\n  train: 0.9\n  val: 0.1\n  test: 0.1\n"  # sums to 1.1
    )
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    message = str(err.value)
    assert message.startswith("3 problem(s) in the configuration:")
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in message
    assert "dedup.num_perm: expected an integer, got 'lots'" in message
    assert "split: train + val + test must sum to 1, got 1.1" in message
    assert len(err.value.problems) == 3


def test_override_mistakes_join_yaml_mistakes() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {"epochs": "x"}}, ["train.scaling.use_gpu=maybe"])
    assert [p.split(":")[0] for p in err.value.problems] == ["train.epochs",
                                                             "train.scaling.use_gpu"]


def test_value_checks_all_reported() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"split": {"train": 0.9}, "dedup": {"bands": 20, "rows": 8},
                          "train": {"epochs": 0, "text": {"d_model": 100, "n_heads": 3},
                                    "scaling": {"num_workers": -1}}})
    problems = err.value.problems
    assert any(p.startswith("train.scaling.num_workers: must be >= 0") for p in problems)
    assert any(p.startswith("split: train + val + test must sum to 1") for p in problems)
    assert any("dedup.bands x dedup.rows: 20 x 8 = 160 exceeds dedup.num_perm=128" in p
               for p in problems)
    assert any(p.startswith("train.epochs: must be > 0") for p in problems)
    assert any(p.startswith("train.text.d_model") for p in problems)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        config_from_dict({}, ["train.epochs"])


def test_resolved_config_is_json_and_redacts_secrets() -> None:
    cfg = config_from_dict({"storage": {"options": {"endpoint_url": "http://127.0.0.1:9000",
                                                    "aws_secret_access_key": "hunter2",
                                                    "token": "abc"}}})
    data = to_dict(cfg)
    text = json.dumps(data)
    assert data["storage"]["options"]["aws_secret_access_key"] == REDACTED
    assert data["storage"]["options"]["token"] == REDACTED
    assert data["storage"]["options"]["endpoint_url"] == "http://127.0.0.1:9000"
    # Fields naming an environment variable are not secrets themselves.
    assert data["inputs"]["transactions"]["hmac_key_env"] == "PIPELINE_HMAC_KEY"
    assert "hunter2" not in text
    unredacted = to_dict(cfg, redact=False)
    assert unredacted["storage"]["options"]["aws_secret_access_key"] == "hunter2"


def test_config_is_frozen() -> None:
    cfg = PipelineConfig()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 5  # type: ignore[misc]


def test_storage_location_is_the_root_with_its_options(tmp_path: Path) -> None:
    cfg = config_from_dict({"storage": {"root": f"file://{tmp_path}/root/",
                                        "options": {"endpoint_url": "http://127.0.0.1:9000"}}})
    loc = cfg.storage.location
    assert loc.url == f"file://{tmp_path}/root"
    assert dict(loc.options) == {"endpoint_url": "http://127.0.0.1:9000"}
    assert (loc / "runs").options == loc.options
