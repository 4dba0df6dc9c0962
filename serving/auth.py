"""Bearer-token auth for the judge service: named client tokens, rotation, and the loopback rule.

Token sources (exactly one may be set; two at once is refused, see ``configured_source``):

- ``SAFEDRIFT_JUDGE_TOKENS_DIR``: a directory with one file per client team, the file name the client's
  name and the content its token. This is what a Kubernetes Secret mounted as a volume gives
  (``kubectl create secret generic safedrift-judge-tokens --from-literal=team-a=... --from-literal=team-b=...``
  mounted at the directory); the kubelet swaps the files atomically (the ``..data`` symlink) on rotation.
- ``SAFEDRIFT_JUDGE_TOKEN_FILE``: one token in one file (client name ``default``); rotatable too.
- ``SAFEDRIFT_JUDGE_TOKEN``: one token in the environment (client name ``default``); cannot rotate
  without a restart.

Why both env and file set is refused rather than one silently winning: the env var cannot change while a
replica runs, so when both are set one of them is stale, and guessing which one the operator meant
either keeps a revoked token alive (env wins, the bug this replaces) or silently drops the token some
clients use (file wins). Failing at start with both names in the message is the unambiguous choice.

Tokens are read inside the replicas, never passed through Serve config or deployment arguments, so they
appear in no config, dashboard or log; logs carry the client's name only.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger("ray.serve")

TOKEN_ENV = "SAFEDRIFT_JUDGE_TOKEN"
TOKEN_FILE_ENV = "SAFEDRIFT_JUDGE_TOKEN_FILE"
TOKENS_DIR_ENV = "SAFEDRIFT_JUDGE_TOKENS_DIR"
SOURCE_ENVS = (TOKENS_DIR_ENV, TOKEN_FILE_ENV, TOKEN_ENV)
DEFAULT_CLIENT = "default"
# 16 characters of `openssl rand -hex 24` output is far beyond guessing; shorter ones are typos or
# placeholders ("changeme") that must not open the service.
MIN_TOKEN_CHARS = 16
_CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # what a Secret key may be, minus dots first


class TokenConfigError(RuntimeError):
    """The token source is set but unusable (missing/empty/short token, two sources, a shared token)."""


class InsecureBindError(RuntimeError):
    """Refusal to expose an unauthenticated judge beyond this machine."""


def configured_source(environ: os._Environ[str] | dict[str, str] | None = None) -> tuple[str, str] | None:
    """``(env var name, value)`` of the one configured token source, None when none is set."""
    env = os.environ if environ is None else environ
    found = [(name, env[name]) for name in SOURCE_ENVS if env.get(name, "").strip()]
    if len(found) > 1:
        names = " and ".join(name for name, _ in found)
        raise TokenConfigError(
            f"{names} are both set: set exactly one token source. The environment variable cannot be "
            f"rotated, so with a mounted file or directory unset {TOKEN_ENV}"
        )
    return found[0] if found else None


def _check_token(token: str, where: str) -> str:
    if not token:
        raise TokenConfigError(f"{where} is empty")
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenConfigError(
            f"{where} holds a token of {len(token)} characters; use at least {MIN_TOKEN_CHARS} "
            "(e.g. `openssl rand -hex 24`)"
        )
    return token


def _read(path: Path, where: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise TokenConfigError(f"{where} names {str(path)!r}, which cannot be read: {reason}") from None


def _read_token_file(path: Path, where: str) -> str:
    """The token in a regular file that only its owner may change; TokenConfigError saying the fix else.
    Anyone who can write the file can let themselves in (or lock a team out)."""
    try:
        st = os.stat(path)  # follows links: what is checked is the file that is read
    except OSError as exc:
        raise TokenConfigError(f"{where} names {str(path)!r}, which cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TokenConfigError(f"{where} is not a regular file; put one token in a plain file")
    if st.st_mode & 0o022:
        raise TokenConfigError(f"{where} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                               "run chmod go-w on it (a Secret volume's defaultMode 0440 does this)")
    return _check_token(_read(path, where), where)


def _dir_entry_token(root: Path, entry: Path) -> str:
    """One client's token from the directory: a valid name, and a regular file inside the directory (a
    Secret volume's links through ``..data`` stay inside; a link out of it is refused)."""
    where = f"{TOKENS_DIR_ENV}/{entry.name}"
    if not _CLIENT_NAME.match(entry.name):
        raise TokenConfigError(f"{where}: {entry.name!r} is not a valid client name "
                               "(letters, digits, '.', '_', '-'; at most 63)")
    real = Path(os.path.realpath(entry))
    if root not in real.parents:
        raise TokenConfigError(f"{where} links to {str(real)!r}, outside {str(root)!r}: a token file must be "
                               "in the directory itself")
    return _read_token_file(real, where)


def _read_dir(path: Path) -> tuple[dict[str, str], list[str]]:
    """Client -> token of every entry that passes the checks, and what is wrong with each other one."""
    if not path.is_dir():
        return {}, [f"{TOKENS_DIR_ENV} names {str(path)!r}, which is not a readable directory"]
    root = Path(os.path.realpath(path))
    tokens: dict[str, str] = {}
    problems: list[str] = []
    for entry in sorted(path.iterdir()):
        if entry.name.startswith("."):  # a Secret volume's "..data" and "..<timestamp>": not clients
            continue
        try:
            tokens[entry.name] = _dir_entry_token(root, entry)
        except TokenConfigError as exc:
            problems.append(str(exc))
    by_token: dict[str, list[str]] = {}
    for name, token in tokens.items():
        by_token.setdefault(token, []).append(name)
    for names in (n for n in by_token.values() if len(n) > 1):  # the log could not say which team sent it
        problems.append(f"{TOKENS_DIR_ENV}: clients {' and '.join(map(repr, names))} share a token; "
                        "give every client its own")
        for name in names:
            del tokens[name]
    if not tokens and not problems:
        problems.append(f"{TOKENS_DIR_ENV} names {str(path)!r}, which holds no token files")
    return tokens, problems


def read_tokens(environ: os._Environ[str] | dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Client name -> token of every valid entry of the configured source, and a message for each invalid
    one (``({}, [])`` when no source is set). A reload keeps exactly the valid ones: fail closed."""
    source = configured_source(environ)
    if source is None:
        return {}, []
    name, value = source
    if name == TOKENS_DIR_ENV:
        return _read_dir(Path(value))
    try:
        if name == TOKEN_FILE_ENV:
            return {DEFAULT_CLIENT: _read_token_file(Path(value), f"{TOKEN_FILE_ENV} ({value!r})")}, []
        return {DEFAULT_CLIENT: _check_token(value.strip(), TOKEN_ENV)}, []
    except TokenConfigError as exc:
        return {}, [str(exc)]


def load_tokens(environ: os._Environ[str] | dict[str, str] | None = None) -> dict[str, str]:
    """Client name -> token from the configured source; ``{}`` when no source is set. Strict (for the
    start): any invalid entry raises TokenConfigError naming it and the fix."""
    tokens, problems = read_tokens(environ)
    if problems:
        raise TokenConfigError("; ".join(problems))
    return tokens


def load_token(environ: os._Environ[str] | dict[str, str] | None = None) -> str | None:
    """A client's own token (``SAFEDRIFT_JUDGE_TOKEN`` or ``SAFEDRIFT_JUDGE_TOKEN_FILE``), None when unset.

    Used by ``RemoteJudge`` next to the service. No length rule here: the server decides what it accepts.
    """
    env = os.environ if environ is None else environ
    value, path = env.get(TOKEN_ENV, "").strip(), env.get(TOKEN_FILE_ENV, "").strip()
    if value and path:
        configured_source(env)  # raises the "both set" message
    if value:
        return value
    if path:
        token = _read(Path(path), TOKEN_FILE_ENV)
        if not token:
            raise TokenConfigError(f"{TOKEN_FILE_ENV} names {path!r}, which is empty")
        return token
    return None


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1. Any other name or address (0.0.0.0 included) is not."""
    if host.strip().lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name that might resolve anywhere: treat as exposed


def check_bind(host: str | None, token: object | None) -> None:
    """Refuse an unauthenticated service on anything but loopback. ``host`` None means unknown: refused."""
    if token is None and (host is None or not is_loopback(host)):
        where = "an unknown address" if host is None else repr(host)
        raise InsecureBindError(
            f"refusing to serve the judge on {where} without a token: set {TOKENS_DIR_ENV}, "
            f"{TOKEN_FILE_ENV} or {TOKEN_ENV}, or bind Serve's HTTP proxy to a loopback address "
            "(127.0.0.1, ::1, localhost)"
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass
class _Client:
    name: str
    current: bytes  # sha256 of the token: equal lengths for compare_digest, no plain token kept
    previous: list[tuple[bytes, float]] = field(default_factory=list)  # (digest, accepted until, monotonic)


class TokenChecker:
    """Checks ``Authorization: Bearer <token>`` against every client's token in constant time.

    The token source is re-read every ``reload_s`` (a Secret volume's files change under the replica).
    A changed token takes effect at once, and the replaced one stays valid for ``overlap_s`` so clients
    can switch over. Reloads fail closed: a client whose file is removed, or no longer valid (a bad name,
    a short token, a link out of the directory, a file others may write), is revoked at once, and the
    others are kept; auth, on at the start, stays on with no clients left (every request then gets 401).
    """

    def __init__(self, required: bool, reload_s: float = 5.0, overlap_s: float = 300.0,
                 clock: object = time.monotonic) -> None:
        self.required = required
        self._reload_s, self._overlap_s = reload_s, overlap_s
        self._clock = clock  # injectable for tests of the overlap window
        self._clients: dict[str, _Client] = {}
        self._problems: list[str] = []
        self._apply(load_tokens(), self._now())  # strict at the start: a bad entry stops the replica
        # Decided once: the source cannot appear or vanish while a replica runs (environment variables).
        # Keyed on it, not on the clients left, so revoking every client never switches auth off.
        self._enabled = bool(self._clients)
        self._checked_at = self._now()
        if required and not self._clients:
            raise TokenConfigError(
                f"auth.required is true but no token is configured: set {TOKENS_DIR_ENV}, {TOKEN_FILE_ENV} "
                f"or {TOKEN_ENV} in the environment of the Ray workers"
            )

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def clients(self) -> list[str]:
        return sorted(self._clients)

    def _apply(self, tokens: dict[str, str], now: float) -> None:
        updated: dict[str, _Client] = {}
        for name, token in tokens.items():
            digest, old = _digest(token), self._clients.get(name)
            if old is None:
                updated[name] = _Client(name, digest)
                continue
            previous = [(d, until) for d, until in old.previous if until > now and d != digest]
            if old.current != digest:
                previous.append((old.current, now + self._overlap_s))
                logger.info("judge auth: token of client %s rotated; the old one is accepted for %.0f s",
                            name, self._overlap_s)
            updated[name] = _Client(name, digest, previous)
        for name in sorted(set(self._clients) - set(tokens)):
            logger.warning("judge auth: client %s removed from the token source or no longer valid; revoked", name)
        self._clients = updated

    def reload(self) -> None:
        """Re-read the token source now; keep only what validates (never the last good tokens: that kept
        a removed client's token valid while any other entry was bad)."""
        if not self._enabled:
            return
        try:
            tokens, problems = read_tokens()
        except TokenConfigError as exc:
            tokens, problems = {}, [str(exc)]
        if problems != self._problems:  # once per change, not every reload_s
            for problem in problems:
                logger.warning("judge auth: token source entry refused on reload (fix it to restore that "
                               "client): %s", problem)
            self._problems = problems
        self._apply(tokens, self._now())

    def _maybe_reload(self) -> None:
        now = self._now()
        if now - self._checked_at >= self._reload_s:
            self._checked_at = now
            self.reload()

    def identify(self, authorization: str | None) -> str | None:
        """The name of the client whose token is presented, or None (no/invalid token)."""
        self._maybe_reload()
        if not authorization:
            return None
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return None
        digest, now, match = _digest(presented.strip()), self._now(), None
        # Every digest is compared, match or not, so the time taken says nothing about which matched.
        for client in self._clients.values():
            candidates = [client.current] + [d for d, until in client.previous if until > now]
            for candidate in candidates:
                if hmac.compare_digest(digest, candidate) and match is None:
                    match = client.name
        return match

    def check(self, authorization: str | None) -> bool:
        """True when the request may proceed (a valid token, or auth off because no source is configured)."""
        return not self._enabled or self.identify(authorization) is not None


def serve_proxy_host() -> str | None:
    """The host Serve's HTTP proxies bind on this cluster, read from the running Serve controller; None
    when it cannot be read (no controller reachable, or the private API moved): callers then fail closed."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client(raise_if_no_controller_running=False)
        return None if client is None else str(client.http_config.host)
    except Exception:
        return None


def check_exposure(auth_required: bool, where: str) -> None:
    """The fail-closed rule for every way to start the service (``where`` names the caller in the message).

    - a configured token source must be usable (``load_tokens`` raises otherwise);
    - ``auth.required`` with no token source: refused, naming the variables to set;
    - auth off and no token: only if Serve's proxy demonstrably binds loopback.
    """
    tokens = load_tokens()
    if tokens:
        return
    if auth_required:
        raise TokenConfigError(
            f"{where}: auth.required is true but no token is configured: set {TOKENS_DIR_ENV}, "
            f"{TOKEN_FILE_ENV} or {TOKEN_ENV} where the Ray workers run"
        )
    check_bind(serve_proxy_host(), None)
