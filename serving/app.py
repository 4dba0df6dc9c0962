"""Building and running the judge application.

Three ways to deploy, one config:
- ``serve run serving/judge.yaml`` (or ``serve deploy``): the file's ``import_path`` is ``build_app``
  and its ``args`` are a ``JudgeServiceConfig``;
- ``serve_judge(...)`` from Python / the ``safedrift serve`` CLI;
- a KubeRay RayService that embeds ``serving/judge.yaml`` as its ``serveConfigV2``.

All of them go through ``build_app``, so that is where the fail-closed rule lives (``check_exposure``): no
usable token source and ``auth.required`` -> refused; auth off -> refused unless Serve's HTTP proxy binds
loopback. The ingress replica checks the same rule again in its own environment.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from serving.auth import (
    TOKEN_FILE_ENV,
    TOKENS_DIR_ENV,
    check_bind,
    check_exposure,
    configured_source,
    load_tokens,
)
from serving.backend import JudgeBackend
from serving.config import JudgeServiceConfig, app_settings, http_settings, load_config
from serving.ingress import JudgeIngress
from serving.proxy import CALLBACK, CALLBACK_ENV, GUARD_HEADER

logger = logging.getLogger(__name__)

BACKEND_DEPLOYMENT = "JudgeBackend"
INGRESS_DEPLOYMENT = "JudgeIngress"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder (the ``import_path`` of serving/judge.yaml): ingress -> batched judge."""
    cfg = load_config(args or {})
    # Raises InsecureBindError / TokenConfigError: `serve run`, `serve deploy` and the RayService print
    # the message and deploy nothing.
    check_exposure(cfg.auth.required, "serving.app:build_app")
    cfg_dict = cfg.model_dump()
    backend = JudgeBackend.options(name=BACKEND_DEPLOYMENT, **cfg.backend.serve_options()).bind(cfg_dict)
    # A replica that cannot start (e.g. auth required but no token) should fail the deploy quickly
    # instead of being retried for minutes.
    return JudgeIngress.options(
        name=INGRESS_DEPLOYMENT, max_constructor_retry_count=3, **cfg.ingress.serve_options()
    ).bind(backend, cfg_dict)


@dataclass
class JudgeService:
    """A running judge application (returned by ``serve_judge(..., blocking=False)``)."""

    url: str  # base URL: POST {url}/v1/judge
    app_name: str
    handle: DeploymentHandle  # the ingress

    def backend_handle(self) -> DeploymentHandle:
        return serve.get_deployment_handle(BACKEND_DEPLOYMENT, app_name=self.app_name)

    def shutdown(self) -> None:
        serve.delete(self.app_name)


def _url(host: str, port: int, route_prefix: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    shown = "127.0.0.1" if host in {"0.0.0.0", "::"} else shown  # a bind-all address is reached locally
    return f"http://{shown}:{port}{route_prefix.rstrip('/')}"


def _actual_bind(host: str, port: int, token: str | None) -> tuple[str, int]:
    """Serve's HTTP options are cluster-wide and fixed once Serve runs: check what is really bound."""
    try:
        from ray.serve.context import _get_global_client

        http = _get_global_client().http_config
        actual_host, actual_port = str(http.host), int(http.port)
    except Exception:  # private API: if it moves, trust the requested values
        return host, port
    if (actual_host, actual_port) != (host, port):
        check_bind(actual_host, token)  # an already-running proxy on 0.0.0.0 without a token: refuse
        logger.warning("Serve already runs on this cluster at %s:%d; the judge uses that, not %s:%d",
                       actual_host, actual_port, host, port)
    return actual_host, actual_port


def _check_proxy_limits(url: str) -> bool:
    """Whether the proxy answering `url` runs serving/proxy.py's limits (a warning naming the fix if not:
    a Ray cluster started elsewhere keeps the environment it was started with)."""
    import httpx

    try:
        guarded = GUARD_HEADER.decode() in httpx.get(f"{url}/healthz", timeout=10).headers
    except httpx.HTTPError:
        return False
    if not guarded:
        logger.warning("Serve's HTTP proxy runs without safedrift's limits (head and body deadlines, header "
                       "size, no client switch for the request timeout): start the Ray cluster with %s=%s "
                       "in its environment", CALLBACK_ENV, CALLBACK)
    return guarded


def serve_judge(
    config: str | Path | dict[str, Any] | JudgeServiceConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    blocking: bool = False,
    *,
    app_name: str | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> JudgeService:
    """Start the judge service on Ray Serve and return where it listens.

    ``config``: path to serving/judge.yaml (or any Serve config / args YAML), a dict, or a config object.
    ``host``/``port``: where Serve's HTTP proxy binds (cluster-wide Serve setting: if Serve is already
    running on this cluster, its existing HTTP options stay). Without a token source
    (``SAFEDRIFT_JUDGE_TOKENS_DIR``, ``SAFEDRIFT_JUDGE_TOKEN_FILE`` or ``SAFEDRIFT_JUDGE_TOKEN``) only a
    loopback host is accepted (``InsecureBindError``).
    ``blocking``: serve until Ctrl-C, then delete the application.
    Ray: an already initialised Ray is used; otherwise ``ray.init(address=ray_address)`` (a new local
    cluster when None, with ``num_cpus``).
    """
    cfg = load_config(config)
    settings = app_settings(config if not isinstance(config, JudgeServiceConfig) else None)
    name = app_name or settings["name"]

    token = load_tokens() or None  # raises TokenConfigError for an unusable or ambiguous token source
    check_bind(host, token)  # before anything starts
    if token is None:
        # Loopback only (checked above): local development without a token.
        cfg = cfg.model_copy(update={"auth": cfg.auth.model_copy(update={"required": False})})
        logger.warning("no judge token configured: authentication is off; serving on loopback %s only", host)

    source = configured_source()
    if source is not None and source[0] in (TOKEN_FILE_ENV, TOKENS_DIR_ENV):
        # Replicas inherit the environment of the Ray cluster, which may predate this process's; the
        # path is no secret, so hand it to the ingress explicitly (the token itself never is).
        actor_opts = dict(cfg.ingress.ray_actor_options)
        runtime_env = dict(actor_opts.get("runtime_env") or {})
        runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), source[0]: source[1]}
        actor_opts["runtime_env"] = runtime_env
        cfg = cfg.model_copy(update={"ingress": cfg.ingress.model_copy(update={"ray_actor_options": actor_opts})})

    if not ray.is_initialized():
        # The proxy's limits (serving/proxy.py) load in the proxy process, from its environment: set
        # before Ray starts, it is inherited by every process of the local cluster.
        os.environ.setdefault(CALLBACK_ENV, CALLBACK)
        if ray_address:
            ray.init(address=ray_address)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False)
    serve_file = config if isinstance(config, str | Path | dict) else None
    serve.start(http_options={"host": host, "port": port, **http_settings(serve_file)})
    host, port = _actual_bind(host, port, token)
    handle = serve.run(build_app(cfg.model_dump()), name=name, route_prefix=settings["route_prefix"])
    service = JudgeService(url=_url(host, port, settings["route_prefix"]), app_name=name, handle=handle)
    _check_proxy_limits(service.url)
    logger.info("judge service %s up at %s", name, service.url)
    if blocking:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            service.shutdown()
    return service
