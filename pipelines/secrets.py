"""Secrets in a study config: which values are secret, the one public view every sink writes, the one view
every hash is taken of, and reading a secret from a file or an environment variable where it is used.

The rule, applied anywhere in the config tree (``judge.options``, ``translate.options.<name>``,
``generate.options``, ``mlflow`` ... and any plugin's options):

- a key is *secret-named* when one of its words (split at ``_``, ``-``, ``.`` and camelCase) is token(s),
  password, passwd, pwd, secret(s), credential(s), auth, authorization, bearer, cookie, passphrase or
  apikey, or two of them read api/access/private/secret/session/client + key/secret (``api_key``,
  ``AccessKey``, ``client_secret``);
- its value is secret when it holds text: every string in it is masked (numbers and booleans are not
  secrets, so ``max_new_tokens: 40`` and ``auth: {required: true}`` stay as they are);
- a secret-named key whose last word is file, path, env, var or dir (``token_file``, ``token_env``) is a
  *reference*: where the secret is, not the secret. It is shown, but, like the secret, left out of hashes;
- every string that is a URI loses its user info (``user:password@``) and the values of secret-named
  query parameters (``?password=...``), in both views.

``public_view`` is what stdout, logs, MLflow params/tags/artifacts, manifests and the report get;
``hash_view`` is what names outputs: no secret and no reference in it, so rotating a token (or moving
its file) re-runs nothing. Both are the identity on a config without secrets, so adding this changed no
existing hash."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipelines.errors import ConfigError
from pipelines.hashing import stable_hash

MASK = "***"
_SECRET_WORDS = frozenset({"token", "tokens", "password", "passwd", "pwd", "secret", "secrets", "credential",
                           "credentials", "auth", "authorization", "bearer", "cookie", "passphrase", "apikey"})
_SECRET_PAIRS = frozenset({("api", "key"), ("access", "key"), ("private", "key"), ("secret", "key"),
                           ("session", "key"), ("client", "secret")})
_REFERENCE_WORDS = frozenset({"file", "path", "env", "var", "dir"})
_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _words(key: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(key)]


def secret_kind(key: object) -> Literal["secret", "reference"] | None:
    """'secret' for a key named like a secret, 'reference' for one naming where a secret is, else None."""
    words = _words(str(key))
    pairs = zip(words, words[1:], strict=False)  # neighbouring words: api + key, client + secret
    named = any(w in _SECRET_WORDS for w in words) or any(p in _SECRET_PAIRS for p in pairs)
    if not named:
        return None
    return "reference" if words[-1] in _REFERENCE_WORDS else "secret"


def _has_text(value: Any) -> bool:
    if isinstance(value, str | bytes):
        return bool(value)
    if isinstance(value, Mapping):
        return any(_has_text(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_text(v) for v in value)
    return False


def _mask(value: Any) -> Any:
    """Every non-empty string in `value` masked; numbers, booleans and None kept (they are no secrets)."""
    if isinstance(value, str | bytes):
        return MASK if value else value
    if isinstance(value, Mapping):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    return value


# Query parameters that carry a signature or key in signed URLs (S3/GCS presigned, Azure SAS, API keys),
# beyond the secret-named keys: a URL's ``?key=`` or ``?sig=`` is the credential itself. Only for query
# parameters: a config key named ``key`` is not assumed secret (that would change existing hashes).
_QUERY_SECRET_WORDS = frozenset({"key", "sig", "signature", "credential", "token"})


def _secret_param(name: str) -> bool:
    return secret_kind(name) == "secret" or any(w in _QUERY_SECRET_WORDS for w in _words(name))


def redact_uri(uri: str | None, *, drop: bool = False) -> str | None:
    """A URI without ``user:password@`` and with secret query values (secret-named, or a signed URL's
    ``key``/``sig``/``X-Amz-Signature``) masked (``drop``: removed)."""
    if not uri or not _URI.match(uri):
        return uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:  # not parseable (a bad port): keep nothing after "://" that could be a credential
        return uri if "@" not in uri and "?" not in uri else uri.split("://", 1)[0] + "://" + MASK
    netloc, query = parts.netloc, parts.query
    if "@" in netloc:
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = host + (f":{port}" if port else "")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret_param(k) for k, _ in pairs):
        kept = [(k, v) for k, v in pairs if not _secret_param(k)] if drop else \
            [(k, MASK if _secret_param(k) and v else v) for k, v in pairs]
        query = urlencode(kept, safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing secret in it: unchanged, byte for byte (it names folders through hashes)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>,{}\[\]]+")
# key=value, key: value, "key": "value" (a YAML or JSON flow mapping in an override, as the README writes
# `judge.options={url: ..., token: ...}`), the value quoted or bare.
_KEY_VALUE = re.compile(r"""(?P<key>[A-Za-z_][\w.-]*)(?P<sep>["']?\s*[:=]\s*)(?P<val>"[^"]*"|'[^']*'|[^\s,'"{}\[\]]+)""")


_NOT_TEXT = re.compile(r"^([-+]?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null|none|True|False|None)$")


def redact_text(text: str) -> str:
    """Free text (a command line, an error message) with every secret this module knows masked: the
    value after a secret-named key in ``key=value`` / ``key: value`` form, and URI credentials and secret
    query parameters. For what is not a config tree: a lock file's command line, a log line."""
    def value(m: re.Match[str]) -> str:
        if secret_kind(m["key"].rsplit(".", 1)[-1]) != "secret" or _NOT_TEXT.match(m["val"]):
            return m[0]  # numbers and booleans are no secrets (max_new_tokens: 40), as in public_view
        val = m["val"]
        masked = val[0] + MASK + val[0] if val[:1] in "\"'" and len(val) > 1 else MASK
        return m["key"] + m["sep"] + masked

    text = _URI_IN_TEXT.sub(lambda m: redact_uri(m[0]) or "", text)
    return _KEY_VALUE.sub(value, text)


def redact_argv(argv: list[str]) -> str:
    """A command line for records and messages: ``redact_text`` of each argument, and the argument after
    a secret-named flag (``--token abc``) masked."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        flag = argv[i - 1] if i else ""
        secret_flag = flag.startswith("-") and "=" not in flag and secret_kind(flag.lstrip("-")) == "secret"
        out.append(MASK if secret_flag and not arg.startswith("-") else redact_text(arg))
    return " ".join(out)


def _as_data(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # a pydantic config (StudyConfig or one of its sections)
    return dump(mode="json") if callable(dump) else obj


def public_view(obj: Any) -> Any:
    """A copy of a config (or any JSON-like data: a manifest, a flat params dict) that may be printed,
    logged and stored: secret values masked as ``***``, URIs without credentials."""
    return _public(_as_data(obj))


def _public(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: (_mask(v) if secret_kind(k) == "secret" else _public(v)) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_public(v) for v in obj]
    if isinstance(obj, str):
        return redact_uri(obj)
    return obj


def hash_view(obj: Any) -> Any:
    """What hashes are taken of: secrets and references to them left out, URIs without credentials."""
    return _hashable(_as_data(obj))


def _hashable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: _hashable(v) for k, v in obj.items() if not (secret_kind(k) and _has_text(v))}
    if isinstance(obj, list | tuple):
        return [_hashable(v) for v in obj]
    if isinstance(obj, str):
        return redact_uri(obj, drop=True)
    return obj


def public_hash(obj: Any, length: int = 12) -> str:
    """stable_hash of the hash view: equal for configs that differ only in their secrets."""
    return stable_hash(hash_view(obj), length)


def read_secret(what: str, value: str | None = None, file: str | Path | None = None,
                env: str | None = None) -> str | None:
    """A secret given inline, in a file (read now, so a rotated file is picked up by the next run), or in
    the environment variable named `env`; None when none is given. `what` names the option in errors;
    no error message contains the secret."""
    given = [name for name, v in (("", value), ("_file", file), ("_env", env)) if v not in (None, "")]
    if len(given) > 1:
        raise ConfigError(f"{what}: give one of {', '.join(what + g for g in given)}, not several")
    if file not in (None, ""):
        try:
            text = Path(file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(f"{what}_file names {str(file)!r}, which cannot be read ({reason}): "
                              "point it at a readable file holding only the secret") from None
        if not text:
            raise ConfigError(f"{what}_file names {str(file)!r}, which is empty")
        return text
    if env not in (None, ""):
        text = (os.environ.get(str(env)) or "").strip()
        if not text:
            raise ConfigError(f"{what}_env names the environment variable {env}, which is not set here: set it "
                              "where this component runs (the Ray workers' environment on a cluster)")
        return text
    return value or None
