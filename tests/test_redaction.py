"""Credentials of S3, GCS and Azure, in fsspec's and Spark/Hadoop's spellings, never reach
run.json, a job's spec or `pipeline config` output; harmless settings stay readable
(issue 13, item 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.config import REDACTED, config_from_dict, to_dict
from pipeline.orchestrator import run_pipeline
from pipeline.orchestrator.job import JobSpecError, shippable_config
from pipeline.orchestrator.stages import Stage, StageResult
from pipeline.redact import secret_key, secret_value

pytestmark = pytest.mark.unit

#: real credential settings: (where they go, key)
SECRET_KEYS = [
    # S3: s3fs options, botocore client_kwargs, environment names
    ("options", "key"), ("options", "secret"), ("options", "token"),
    ("options", "aws_access_key_id"), ("options", "aws_secret_access_key"),
    ("options", "aws_session_token"), ("options", "session_token"),
    ("options", "secret_access_key"), ("options", "AWS_SECRET_ACCESS_KEY"),
    # S3 through Spark/Hadoop S3A
    ("conf", "spark.hadoop.fs.s3a.access.key"), ("conf", "spark.hadoop.fs.s3a.secret.key"),
    ("conf", "spark.hadoop.fs.s3a.session.token"),
    ("conf", "spark.hadoop.fs.s3a.bucket.logs.secret.key"),
    ("conf", "spark.hadoop.fs.s3a.encryption.key"),
    ("conf", "spark.hadoop.fs.s3a.server-side-encryption.key"),
    # Azure: adlfs options
    ("options", "account_key"), ("options", "sas_token"), ("options", "connection_string"),
    ("options", "client_secret"), ("options", "credential"), ("options", "AccountKey"),
    # Azure through Spark/Hadoop ABFS and WASB
    ("conf", "fs.azure.account.key.myacct.dfs.core.windows.net"),
    ("conf", "spark.hadoop.fs.azure.account.key.myacct.blob.core.windows.net"),
    ("conf", "spark.hadoop.fs.azure.account.oauth2.client.secret"),
    ("conf", "spark.hadoop.fs.azure.account.oauth2.client.secret.myacct.dfs.core.windows.net"),
    ("conf", "spark.hadoop.fs.azure.sas.container.myacct.blob.core.windows.net"),
    ("conf", "spark.hadoop.fs.azure.sas.fixed.token"),
    # GCS: gcsfs options and a service-account's fields
    ("options", "private_key"), ("options", "private_key_id"), ("options", "credentials"),
    ("options", "service_account_info"),
    # GCS through Spark/Hadoop
    ("conf", "spark.hadoop.fs.gs.auth.service.account.private.key"),
    ("conf", "spark.hadoop.fs.gs.auth.service.account.private.key.id"),
    ("conf", "spark.hadoop.fs.gs.auth.client.secret"),
    # general
    ("options", "password"), ("conf", "spark.ssl.keyStorePassword"),
    ("conf", "spark.authenticate.secret"), ("options", "api_key"),
]

#: settings that are no secrets and must stay readable
HARMLESS_KEYS = [
    ("options", "endpoint_url"), ("options", "region_name"), ("options", "anon"),
    ("options", "use_ssl"), ("options", "account_name"), ("options", "client_id"),
    ("options", "tenant_id"), ("options", "project"), ("options", "requester_pays"),
    ("options", "version_aware"), ("options", "default_block_size"),
    ("conf", "spark.hadoop.fs.s3a.endpoint"), ("conf", "spark.hadoop.fs.s3a.path.style.access"),
    ("conf", "spark.hadoop.fs.s3a.aws.credentials.provider"),
    ("conf", "spark.hadoop.fs.s3a.signing-algorithm"),
    ("conf", "spark.hadoop.google.cloud.auth.service.account.json.keyfile"),
    ("conf", "spark.hadoop.fs.azure.account.auth.type.myacct.dfs.core.windows.net"),
    ("conf", "spark.hadoop.fs.azure.account.oauth2.client.id"),
    ("conf", "spark.sql.shuffle.partitions"), ("conf", "spark.executor.memory"),
]


def _cfg(where: str, key: str, value: Any) -> Any:
    section = ({"storage": {"options": {key: value}}} if where == "options"
               else {"spark": {"conf": {key: value}}})
    return config_from_dict(section)


def _value_of(data: dict[str, Any], where: str, key: str) -> Any:
    return (data["storage"]["options"] if where == "options" else data["spark"]["conf"])[key]


@pytest.mark.parametrize(("where", "key"), SECRET_KEYS)
def test_credential_keys_are_redacted(where: str, key: str) -> None:
    assert secret_key(key)
    data = to_dict(_cfg(where, key, "s3cr3t-value"))
    assert _value_of(data, where, key) == REDACTED
    assert "s3cr3t-value" not in json.dumps(data)


@pytest.mark.parametrize(("where", "key"), HARMLESS_KEYS)
def test_harmless_keys_stay_readable(where: str, key: str) -> None:
    assert not secret_key(key)
    assert _value_of(to_dict(_cfg(where, key, "plain")), where, key) == "plain"


def test_config_field_names_are_no_secrets() -> None:
    for name in ("max_new_tokens", "hmac_key_env", "auth_token_env", "text_field", "id_field"):
        assert not secret_key(name), name


def test_nested_options_and_values_that_carry_credentials() -> None:
    service_account = {"type": "service_account", "project_id": "p",
                       "private_key_id": "kid-123",
                       "private_key": "-----BEGIN PRIVATE KEY-----\nMIIE\n"
                                      "-----END PRIVATE KEY-----\n",
                       "client_email": "sa@p.iam.gserviceaccount.com"}
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "client_kwargs": {"aws_access_key_id": "AKIAEXAMPLE", "aws_secret_access_key": "sk-1",
                          "region_name": "eu-west-1"},
        "token": service_account,  # gcsfs takes the service account's info as `token`
        "info": json.dumps(service_account),  # the same as a JSON string, under any name
        "pem": service_account["private_key"],
        "conn": "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=abc123==;"
                "EndpointSuffix=core.windows.net",
        "url": "https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=sigsig",
        "proxy": "http://user:pa55@proxy:3128",
    }
    cfg = config_from_dict({"storage": {"options": options}, "spark": {
        "submit_args": ["--conf", "spark.hadoop.fs.s3a.secret.key=sk-2", "--executor-memory",
                        "2g"]}})
    data = to_dict(cfg)
    text = json.dumps(data)
    for secret in ("AKIAEXAMPLE", "sk-1", "kid-123", "MIIE", "abc123", "sigsig", "pa55", "sk-2"):
        assert secret not in text, secret
    shown = data["storage"]["options"]
    assert shown["endpoint_url"] == "http://127.0.0.1:9000"
    # storage.options values are strings: the nested mapping arrives as its text, which
    # carries the credentials, so it is masked whole; a real mapping is masked key by key.
    assert shown["client_kwargs"] == REDACTED
    nested = to_dict({"client_kwargs": options["client_kwargs"]})
    assert nested == {"client_kwargs": {"aws_access_key_id": REDACTED,
                                        "aws_secret_access_key": REDACTED,
                                        "region_name": "eu-west-1"}}
    assert data["spark"]["submit_args"] == ["--conf", REDACTED, "--executor-memory", "2g"]
    for harmless in ("http://127.0.0.1:9000", "s3://bucket/runs", "abfs://c@acct.dfs.core."
                     "windows.net/x", "spark.executor.memory=2g", "local[4]"):
        assert not secret_value(harmless), harmless


def test_pipeline_config_output_and_job_spec_hold_no_credential(
        capsys: pytest.CaptureFixture[str]) -> None:
    overrides = ["--set", "storage.options={account_key: azkey, sas_token: sastok, "
                 "connection_string: 'AccountName=a;AccountKey=k1'}",
                 "--set", "spark.conf={spark.hadoop.fs.s3a.access.key: AKIA1, "
                 "spark.hadoop.fs.s3a.secret.key: s3sec, "
                 "fs.azure.account.key.acct.dfs.core.windows.net: abfskey}"]
    assert main(["config", *overrides]) == 0
    out = capsys.readouterr().out
    for secret in ("azkey", "sastok", "k1", "AKIA1", "s3sec", "abfskey"):
        assert secret not in out, secret
    # A job never receives them: the spec refuses the config and names the keys.
    cfg = config_from_dict({"storage": {"options": {"account_key": "azkey"}},
                            "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "s3sec"}}})
    with pytest.raises(JobSpecError, match=r"storage\.options\.account_key.*"
                                           r"spark\.conf\.spark\.hadoop\.fs\.s3a\.secret\.key"):
        shippable_config(cfg)


def test_run_json_holds_no_credential(tmp_path: Path) -> None:
    cfg = config_from_dict({
        "storage": {"root": f"file://{tmp_path}",
                    "options": {"sas_token": "sastok", "region_name": "westeurope"}},
        "spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "s3sec"}}, "run_id": "r1"})
    stage = Stage(name="one", run=lambda ctx: StageResult(summary="ok"),
                  config_of=lambda c: {})
    run_pipeline(cfg, [stage])
    text = (tmp_path / "runs/r1/run.json").read_text()
    assert "sastok" not in text and "s3sec" not in text
    assert "westeurope" in text
