"""Per-client token buckets for the ingress (one set per ingress replica, so the service-wide limit is
the configured one times the number of ingress replicas; serving/judge.yaml runs one)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from serving.config import RateLimits


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits, self._clock = limits, clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, client: str) -> float | None:
        """Take one request from ``client``'s bucket: None when allowed, else seconds until one is free."""
        limit = self._limits.for_client(client)
        if limit is None:
            return None
        now = self._clock()
        bucket = self._buckets.setdefault(client, _Bucket(float(limit.burst), now))
        bucket.tokens = min(float(limit.burst), bucket.tokens + (now - bucket.updated) * limit.requests_per_s)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / limit.requests_per_s

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """Retry-After takes whole seconds: round up, so a client that obeys it is let in."""
        return str(max(1, math.ceil(wait_s)))
