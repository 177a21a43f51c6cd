"""The HMAC key of the card/account tokens: read from its variable and never logged; the
public development key only for generated sample data (issue 13/10)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pipeline.config import TransactionInputConfig, config_from_dict
from pipeline.ingest.tokens import (
    DEV_HMAC_KEY,
    hmac_key_id,
    resolve_hmac_key,
    uses_sample_data,
)
from pipeline.modalities import transactions as txn_modality

pytestmark = pytest.mark.unit

VAR = "TEST_HMAC_KEY_POLICY"
REAL_KEY = "9f1c0b7e5a3d48c2b6e1f07a9d4c3b2a"


def _cfg(tmp_path: Path, paths: list[str], master: str = "local[2]") -> object:
    return config_from_dict({
        "run_id": "h", "storage": {"root": f"file://{tmp_path}"},
        "modalities": ["transactions"], "spark": {"master": master},
        "inputs": {"transactions": {"paths": paths, "hmac_key_env": VAR}}})


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_or_empty_key_with_real_inputs_stops_in_local_mode(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    # Local Spark (as in the shipped Kubernetes RayJob) with configured inputs: the old
    # code fell back to the public key here; now it stops, naming the variable.
    if value is None:
        monkeypatch.delenv(VAR, raising=False)
    else:
        monkeypatch.setenv(VAR, value)
    raw = tmp_path / "cards.csv"
    raw.write_text("txn_id\n")
    cfg = _cfg(tmp_path, [str(raw)])
    t = cfg.inputs.transactions  # type: ignore[attr-defined]
    assert not uses_sample_data(t)
    with pytest.raises(RuntimeError, match=rf"{VAR} is not set \(or empty\).*paths names real"):
        resolve_hmac_key(t, sample_data=uses_sample_data(t))
    # The cache key's key id (computed at plan time) stops the same way.
    with pytest.raises(RuntimeError, match=VAR):
        txn_modality._key_parts(cfg)  # type: ignore[arg-type]


def test_sample_data_gets_the_development_key_and_its_id(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
        ) -> None:
    monkeypatch.setenv(VAR, "")
    cfg = _cfg(tmp_path, [], master="spark://10.0.0.1:7077")
    t = cfg.inputs.transactions  # type: ignore[attr-defined]
    assert uses_sample_data(t)
    with caplog.at_level("WARNING", logger="pipeline.ingest.tokens"):
        assert resolve_hmac_key(t, sample_data=True) == DEV_HMAC_KEY
    assert VAR in caplog.text and "sample data" in caplog.text
    # The id in the cache key describes the key actually used (the development one) ...
    assert txn_modality._key_parts(cfg) == {  # type: ignore[arg-type]
        "hmac_key_id": hmac_key_id(DEV_HMAC_KEY)}
    # ... and a configured key replaces it, for sample and real data alike.
    monkeypatch.setenv(VAR, REAL_KEY)
    assert txn_modality._key_parts(cfg) == {  # type: ignore[arg-type]
        "hmac_key_id": hmac_key_id(REAL_KEY.encode())}
    assert hmac_key_id(REAL_KEY.encode()) != hmac_key_id(DEV_HMAC_KEY)


def test_placeholder_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(VAR, "REPLACE_ME")  # infra/k8s/secret.example.yaml's placeholder
    with pytest.raises(RuntimeError, match=rf"{VAR} holds a 10-byte HMAC key"):
        resolve_hmac_key(TransactionInputConfig(hmac_key_env=VAR), sample_data=False)


def test_resolve_hmac_key(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
                          ) -> None:
    cfg = TransactionInputConfig(hmac_key_env="TEST_TXN_HMAC_KEY")
    monkeypatch.setenv("TEST_TXN_HMAC_KEY", "s3cr3t-value-0123456789")
    with caplog.at_level(logging.DEBUG):
        assert resolve_hmac_key(cfg, sample_data=False) == b"s3cr3t-value-0123456789"
    assert "s3cr3t" not in caplog.text
    monkeypatch.delenv("TEST_TXN_HMAC_KEY")
    with caplog.at_level(logging.WARNING, logger="pipeline.ingest.tokens"):
        assert resolve_hmac_key(cfg, sample_data=True) == DEV_HMAC_KEY
    assert "TEST_TXN_HMAC_KEY" in caplog.text and "NOT secret" in caplog.text
    with pytest.raises(RuntimeError, match="TEST_TXN_HMAC_KEY"):
        resolve_hmac_key(cfg, sample_data=False)
