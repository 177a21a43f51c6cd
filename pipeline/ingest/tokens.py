"""Keyed tokens for card numbers, accounts and PII columns: the HMAC key (where it comes
from, its non-secret fingerprint) and HMAC-SHA256 as Spark built-in column expressions.

The transaction ingest (pipeline.ingest.transactions) turns every card number, account and
declared `pii` value into `TOKEN_HEX_CHARS` hex characters of HMAC-SHA256(key, "<kind>:" +
value); the key's fingerprint (`hmac_key_id`) is part of the stage's cache key, because the
tokens change when the key does. The key is never logged, stored or put into a query plan.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline.config import TransactionInputConfig, env_secret

log = logging.getLogger(__name__)

TOKEN_HEX_CHARS = 32
# Used only for generated sample data (`pipeline synth`) when the key variable is unset or
# empty; it is public, so tokens made with it are not secret.
DEV_HMAC_KEY = b"pipeline-local-development-hmac-key-NOT-SECRET"
# A shorter key is a placeholder or a typo, not a secret (HMAC-SHA256 wants 32 random bytes).
MIN_HMAC_KEY_BYTES = 16
_BLOCK = 64  # SHA-256 block size in bytes

def uses_sample_data(cfg: TransactionInputConfig) -> bool:
    """True when the transactions come from the synth stage (`pipeline synth`): no
    `inputs.transactions.paths` configured, so ingest reads the generated sample data."""
    return not cfg.paths


def resolve_hmac_key(cfg: TransactionInputConfig, sample_data: bool) -> bytes:
    """The HMAC key: the UTF-8 bytes of the variable named by `cfg.hmac_key_env`.

    An unset or empty (or blank) variable gets the public `DEV_HMAC_KEY` only for generated
    sample data (`sample_data`, see `uses_sample_data`), with a warning; for any configured
    input it raises, naming the variable, whatever the Spark master: a real card number
    tokenized with a public key is brute-forced in minutes. A key shorter than
    `MIN_HMAC_KEY_BYTES` (a placeholder such as REPLACE_ME) is refused too. The key itself
    is never logged."""
    var = cfg.hmac_key_env
    value = env_secret(var)
    if value is not None and value.strip():
        key = value.encode("utf-8")
        if len(key) < MIN_HMAC_KEY_BYTES:
            raise RuntimeError(
                f"environment variable {var} holds a {len(key)}-byte HMAC key; card/account "
                f"tokens need a secret of at least {MIN_HMAC_KEY_BYTES} bytes (e.g. "
                "`openssl rand -hex 32`; inputs.transactions.hmac_key_env)")
        return key
    if sample_data:
        log.warning("environment variable %s is not set: using the public development HMAC "
                    "key for the generated sample data; card and account tokens are NOT "
                    "secret (set %s for real data)", var, var)
        return DEV_HMAC_KEY
    raise RuntimeError(
        f"environment variable {var} is not set (or empty); it must hold the secret key for "
        "card/account tokens when inputs.transactions.paths names real data (the public "
        "development key is used only for `pipeline synth` sample data; "
        "inputs.transactions.hmac_key_env)")


def hmac_key_id(key: bytes) -> str:
    """A non-secret fingerprint of the HMAC key: tokens change when the key does, so the key
    must be part of the cache key; this id is safe to store, the key is not."""
    return hmac.new(key, b"pipeline/hmac-key-id", hashlib.sha256).hexdigest()[:12]


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """(K xor ipad, K xor opad) for HMAC-SHA256 (RFC 2104, 64-byte block)."""
    if not key:
        raise ValueError("the HMAC key is empty")
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def with_hmac_key(df: DataFrame, key: bytes) -> DataFrame:
    """`df` plus binary columns `_ipad`, `_opad` for `hmac_sha256_hex`.

    The pads arrive through a broadcast one-row join, not as literals: a literal would be
    printed in query plans, the Spark UI and event logs, and K xor 0x36 gives K back."""
    ipad, opad = hmac_pads(key)
    pads = df.sparkSession.createDataFrame([(bytearray(ipad), bytearray(opad))],
                                           "_ipad binary, _opad binary")
    return df.crossJoin(F.broadcast(pads))


def hmac_sha256_hex(message: Column, ipad: Column, opad: Column) -> Column:
    """HMAC-SHA256(K, message) in hex: H((K^opad) || H((K^ipad) || message))."""
    inner = F.unhex(F.sha2(F.concat(ipad, message.cast("binary")), 256))
    return F.sha2(F.concat(opad, inner), 256)
