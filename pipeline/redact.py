"""Which configuration keys and values are credentials, so they never reach run.json, a
job's spec.json or `pipeline config` output (`pipeline.config.to_dict(redact=True)`).

A key is judged by its words, whatever the spelling: `aws_secret_access_key`,
`spark.hadoop.fs.s3a.secret.key`, `fs.azure.account.key.<account>.dfs.core.windows.net`,
`AccountKey`, `keyStorePassword` and `SAS_TOKEN` split into words the same way (on
punctuation and camelCase). Then it is a secret when

- a word is a credential word (`secret`, `password`, `token`, `credential(s)`, `sas`,
  `sig`, ...), or
- the word `key` is the whole name (fsspec's S3 `key`) or follows a word that makes it a
  credential (`access key`, `account key`, `private key`, `encryption key`, `api key`,
  ...), or
- it says `connection string` or `service account json|info`,

unless its last word says that the value only names or locates one (`..._env` holds a
variable's name, `...credentials.provider` a class name, `...json.keyfile` a path).
`endpoint_url`, `region_name`, `client_id`, `max_new_tokens` are no secrets.

A string value is a secret whatever its key when it carries one: a PEM private key, a
service-account JSON, an Azure connection string (`AccountKey=`, `SharedAccessSignature=`),
a URL with a password (`https://user:pw@host`) or a signed query (`?sig=`,
`X-Amz-Signature=`), JSON or a mapping written as text with a secret key in it, or a
`name=value` pair whose name is a secret (`--conf spark.hadoop.fs.s3a.secret.key=...`).
"""

from __future__ import annotations

import itertools
import re

#: words that make any key holding them a credential
SECRET_WORDS = frozenset({
    "secret", "secrets", "password", "passwd", "passphrase", "pwd", "token", "credential",
    "credentials", "sas", "sig", "signature", "connectionstring", "apikey", "accesskey",
    "secretkey", "accountkey", "privatekey", "sastoken", "authorization", "bearer", "cookie",
})
#: words that make a following `key` a credential (`access key`, `account key`, ...)
KEY_QUALIFIERS = frozenset({
    "access", "account", "private", "secret", "api", "encryption", "shared", "signing",
    "master", "storage", "client", "hmac", "session", "sse", "auth", "customer",
})
#: last words saying the value names or locates a secret rather than holding it
_NAMES_ONLY = frozenset({"env", "provider", "providers", "type", "class", "file", "path",
                         "keyfile", "enabled"})

_VALUE_PATTERNS = (
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?i)(?:^|;)\s*(?:AccountKey|SharedAccessSignature|SharedAccessKey|Password|"
               r"Pwd)\s*="),
    re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#@\s:]*:[^/?#@\s]+@"),
    re.compile(r"(?i)[?&](?:sig|signature|x-amz-signature|x-amz-security-token|"
               r"x-amz-credential|x-goog-signature|x-goog-credential|access_token|token|"
               r"api_key|apikey)="),
)
_PAIR = re.compile(r"\s*([^=\s]+)\s*=(.*)", re.DOTALL)
#: a quoted name followed by ':' inside a value: JSON or a mapping's repr as text
_QUOTED_NAME = re.compile(r"[\"']([A-Za-z0-9_.\-]+)[\"']\s*:")


def words(name: str) -> list[str]:
    """The lower-case words of a key: split on punctuation and camelCase."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return [w for w in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if w]


def secret_key(name: str) -> bool:
    """Whether a mapping key or field name holds a credential (see the module doc)."""
    ws = words(name)
    if not ws or ws[-1] in _NAMES_ONLY:
        return False
    if ws == ["key"] or any(w in SECRET_WORDS for w in ws):
        return True
    pairs = list(itertools.pairwise(ws))
    return any((a in KEY_QUALIFIERS and b == "key")
               or (a, b) == ("connection", "string")
               or (a, b) in (("account", "json"), ("account", "info")) for a, b in pairs)


def secret_value(value: str) -> bool:
    """Whether a string carries a credential, whatever key it is under."""
    if any(p.search(value) for p in _VALUE_PATTERNS):
        return True
    if any(secret_key(m.group(1)) for m in _QUOTED_NAME.finditer(value)):
        return True  # e.g. a service account's JSON ("private_key": ...) as a string
    pair = _PAIR.fullmatch(value)
    return bool(pair and pair.group(2).strip() and secret_key(pair.group(1)))


def redact_url(url: str) -> str:
    """`url` fit to print: a password in it (`user:pw@`) and a query that carries a
    credential (`?sig=...`) are masked; any other URL is returned as is."""
    if not secret_value(url):
        return url
    url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#@\s]*@", r"\1***@", url)
    return re.sub(r"\?.*$", "?***", url)
