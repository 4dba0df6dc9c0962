"""Bearer-token auth for the judge service, and the loopback rule for binding without a token.

The token comes from ``SAFEDRIFT_JUDGE_TOKEN`` or from the file named by ``SAFEDRIFT_JUDGE_TOKEN_FILE``
(a mounted Kubernetes secret). It is read inside the replica, never passed through Serve config or
deployment arguments, so it appears in no config, dashboard or log.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import time
from pathlib import Path

TOKEN_ENV = "SAFEDRIFT_JUDGE_TOKEN"
TOKEN_FILE_ENV = "SAFEDRIFT_JUDGE_TOKEN_FILE"


class TokenConfigError(RuntimeError):
    """The token source is set but unusable (missing or empty file)."""


class InsecureBindError(RuntimeError):
    """Refusal to expose an unauthenticated judge beyond this machine."""


def load_token() -> str | None:
    """The configured token, or None when neither source is set. The env var wins over the file."""
    value = os.environ.get(TOKEN_ENV)
    if value is not None and value.strip():
        return value.strip()
    path = os.environ.get(TOKEN_FILE_ENV)
    if path:
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TokenConfigError(f"{TOKEN_FILE_ENV} names {path!r}, which cannot be read: {exc.strerror}") from None
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


def check_bind(host: str, token: str | None) -> None:
    if token is None and not is_loopback(host):
        raise InsecureBindError(
            f"refusing to serve the judge on {host!r} without a token: set {TOKEN_ENV} or "
            f"{TOKEN_FILE_ENV}, or bind to a loopback address (127.0.0.1, ::1, localhost)"
        )


class TokenChecker:
    """Checks ``Authorization: Bearer <token>`` in constant time.

    The token file is re-read when its mtime changes (checked at most every ``recheck_s``), so a
    rotated Kubernetes secret takes effect without restarting replicas.
    """

    def __init__(self, required: bool, recheck_s: float = 5.0) -> None:
        self.required = required
        self._recheck_s = recheck_s
        self._token = load_token()
        self._file_mtime = self._mtime()
        self._checked_at = time.monotonic()
        if required and self._token is None:
            raise TokenConfigError(
                f"auth.required is true but no token is configured: set {TOKEN_ENV} or {TOKEN_FILE_ENV} "
                "in the environment of the Ray workers"
            )

    @property
    def enabled(self) -> bool:
        return self._token is not None

    @staticmethod
    def _mtime() -> float | None:
        path = os.environ.get(TOKEN_FILE_ENV)
        try:
            return os.stat(path).st_mtime if path else None
        except OSError:
            return None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._recheck_s:
            return
        self._checked_at = now
        mtime = self._mtime()
        if mtime != self._file_mtime:
            self._file_mtime = mtime
            try:
                token = load_token()
            except TokenConfigError:
                return  # a half-written secret: keep the last good token
            if token is not None:
                self._token = token

    def check(self, authorization: str | None) -> bool:
        """True when the request may proceed."""
        self._refresh()
        if self._token is None:
            return True  # no token configured: only reachable on loopback (see check_bind)
        if not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # compare_digest on bytes: constant time in the length of the presented value, and no
        # TypeError for non-ASCII input.
        return hmac.compare_digest(presented.strip().encode("utf-8"), self._token.encode("utf-8"))
