"""Typed configuration of the judge service.

One pydantic model, ``JudgeServiceConfig``, holds every knob: the judge (by registry name), batching,
replicas/autoscaling of the two deployments, request limits and auth. It is the ``args`` block of the
application in ``serving/judge.yaml``; ``load_config`` also accepts a whole Serve config file (it then
takes the first application's ``args``) or a plain dict, so the same file serves ``serve run``,
``serve_judge`` and the RayService.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_APP_NAME = "safedrift-judge"


class _Strict(BaseModel):
    # A typo in a config key must fail loudly, not silently fall back to a default.
    model_config = ConfigDict(extra="forbid")


class JudgeSpec(_Strict):
    name: str = "refusal-phrase"
    options: dict[str, Any] = Field(default_factory=dict)
    # Modules imported in the judge replica before the registry lookup, so judges registered outside
    # pipelines/registries (plugins, the benchmark's simulated model) can be served by name.
    import_modules: list[str] = Field(default_factory=list)
    # The language policy, applied per request item exactly as the pipeline applies it
    # (pipelines/evaluate/judges/policy.py): back-translate to English where a route exists and the judge
    # is better that way, read natively where the judge reads the language, refuse (422) otherwise.
    back_translate: bool = True
    translate_prefer: list[str] = Field(default_factory=lambda: ["apertium"])
    # Measure the judge's agreement with people per language at replica start (in the background; cached
    # under SAFEDRIFT_CACHE): GET /v1/info lists each language with its kappa once it is known.
    validity: bool = True


class BatchingConfig(_Strict):
    enabled: bool = True  # off only to measure what batching buys (benchmarks/serving)
    max_batch_size: int = Field(32, ge=1, le=4096)  # counted in requests, each up to limits.max_items items
    batch_wait_timeout_s: float = Field(0.01, ge=0.0, le=10.0)


class AutoscalingSpec(_Strict):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling: min_replicas must be <= max_replicas")
        return self


class DeploymentSpec(_Strict):
    """Scaling of one deployment: a fixed ``num_replicas`` or ``autoscaling`` (not both)."""

    num_replicas: int | None = Field(1, ge=1)
    autoscaling: AutoscalingSpec | None = None
    # Must be >= max_batch_size on the judge, or batches can never fill (Serve warns about it too).
    max_ongoing_requests: int = Field(64, ge=1)
    # Beyond this many queued requests callers get 503 (back-pressure) instead of unbounded queueing.
    max_queued_requests: int = Field(1024, ge=-1)
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 0.5})

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": dict(self.ray_actor_options),
        }
        if self.autoscaling is not None:
            # Serve rejects num_replicas together with autoscaling_config: the autoscaler owns the count.
            opts["autoscaling_config"] = self.autoscaling.model_dump()
        else:
            opts["num_replicas"] = self.num_replicas or 1
        return opts


class Limits(_Strict):
    max_items: int = Field(256, ge=1)  # items per request; more -> 413
    max_field_chars: int = Field(20_000, ge=1)  # characters per prompt/response; more -> 422
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=64)  # raw request body; more -> 413


class AuthConfig(_Strict):
    # Fail closed: with required=true a replica that finds no token refuses to start. With false, the
    # app builder and the ingress still refuse unless Serve's HTTP proxy binds loopback (serve_judge
    # sets it for a loopback bind with no token configured: local development).
    required: bool = True
    reload_s: float = Field(5.0, gt=0, le=3600)  # how often the token source is re-read (rotation)
    # After a rotation the replaced token is still accepted this long, so clients can switch over.
    rotation_overlap_s: float = Field(300.0, ge=0)


class RateLimit(_Strict):
    requests_per_s: float = Field(gt=0)
    burst: int = Field(ge=1)  # requests a client may send at once after being idle


class RateLimits(_Strict):
    """Per client (token name) token buckets, per ingress replica; over the limit -> 429 + Retry-After."""

    default: RateLimit | None = None  # None: clients not listed below are not limited
    clients: dict[str, RateLimit] = Field(default_factory=dict)

    def for_client(self, name: str) -> RateLimit | None:
        return self.clients.get(name, self.default)


class JudgeServiceConfig(_Strict):
    judge: JudgeSpec = Field(default_factory=JudgeSpec)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    ingress: DeploymentSpec = Field(default_factory=lambda: DeploymentSpec(max_ongoing_requests=256))
    backend: DeploymentSpec = Field(default_factory=lambda: DeploymentSpec(max_ongoing_requests=128))
    limits: Limits = Field(default_factory=Limits)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    # How long the ingress waits for the judge before answering 504; also the deadline after which a
    # queued request is dropped unjudged (a client may ask for less with the X-Deadline-S header).
    judge_timeout_s: float = Field(60.0, gt=0)
    # /docs and /openapi.json: off unless asked for (they map the API for anyone who can reach it).
    api_docs: bool = False
    # /readyz answers from a cached check of the judge deployment this old at most (probes are
    # unauthenticated: each hit must not reach the judge).
    readiness_cache_s: float = Field(2.0, ge=0, le=60)

    @model_validator(mode="after")
    def _batch_fits(self) -> JudgeServiceConfig:
        if self.batching.enabled and self.backend.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                "backend.max_ongoing_requests must be >= batching.max_batch_size, or batches never fill"
            )
        return self


def load_config(source: str | Path | dict[str, Any] | JudgeServiceConfig | None) -> JudgeServiceConfig:
    """Accepts a JudgeServiceConfig, an args dict, a full Serve config dict, or a path to either as YAML."""
    if source is None:
        return JudgeServiceConfig()
    if isinstance(source, JudgeServiceConfig):
        return source
    if isinstance(source, str | Path):
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    else:
        data = dict(source)
    if "applications" in data:  # a whole Serve config file: our args live in the first application
        apps = data["applications"] or []
        if not apps:
            raise ValueError("the Serve config has no applications")
        data = apps[0].get("args") or {}
    return JudgeServiceConfig.model_validate(data)


# Serve's proxy settings that `safedrift serve` takes from a Serve config's http_options (Serve's own
# schema checks them); host and port come from the command line.
PROXY_HTTP_OPTIONS = ("request_timeout_s", "keep_alive_timeout_s")


def http_settings(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """The proxy's request timeout and keep-alive from a Serve config's ``http_options`` ({} if none):
    `safedrift serve` ignored them, so its proxy had no request timeout at all (issue 30)."""
    data: Any = source
    if isinstance(source, str | Path):
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    http = data.get("http_options") if isinstance(data, dict) else None
    return {k: http[k] for k in PROXY_HTTP_OPTIONS if isinstance(http, dict) and http.get(k) is not None}


def app_settings(source: str | Path | dict[str, Any] | None) -> dict[str, Any]:
    """Name and route prefix of the first application of a Serve config, with our defaults."""
    out: dict[str, Any] = {"name": DEFAULT_APP_NAME, "route_prefix": "/"}
    data: Any = source
    if isinstance(source, str | Path):
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8")) or {}
    if isinstance(data, dict) and data.get("applications"):
        app = data["applications"][0]
        out["name"] = app.get("name", out["name"])
        out["route_prefix"] = app.get("route_prefix", out["route_prefix"])
    return out
