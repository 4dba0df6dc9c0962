"""One real judge service per test module (all HTTP tests live in one module, so it starts once): Ray
Serve on 127.0.0.1 at a free port. Module scope, so Ray is shut down before other test directories run.

The client tokens reach the replicas as a Secret-like folder (``SAFEDRIFT_JUDGE_TOKENS_DIR``, one file
per client team), the Kubernetes path, so the fixture also works when another fixture started Ray
before this one (then that Ray is left running). A second app (``aux_service``, route ``/aux``) serves
the simulated judge that raises on and stalls on marked items.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from judge_service_cases import aux_config, free_port, service_config, write_secret_dir


@pytest.fixture(scope="session")
def client_tokens() -> dict[str, str]:
    return {name: f"test-{name}-" + secrets.token_hex(16) for name in ("alpha", "beta", "gamma")}


@pytest.fixture(scope="session")
def judge_token(client_tokens: dict[str, str]) -> str:
    return client_tokens["alpha"]


@pytest.fixture(scope="module")
def secret_dir(client_tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_secret_dir(tmp_path_factory.mktemp("judge-secret") / "tokens", client_tokens)


@pytest.fixture(scope="module")
def judge_service(secret_dir: Path) -> Iterator[object]:
    import ray
    from ray import serve

    from serving.app import serve_judge

    with pytest.MonkeyPatch.context() as mp:
        for name in ("SAFEDRIFT_JUDGE_TOKEN", "SAFEDRIFT_JUDGE_TOKEN_FILE"):
            mp.delenv(name, raising=False)
        mp.setenv("SAFEDRIFT_JUDGE_TOKENS_DIR", str(secret_dir))
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        started_ray = not ray.is_initialized()
        if started_ray:
            # Serve's proxy with safedrift's limits (serving/proxy.py), as `safedrift serve` starts it.
            mp.setenv("RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH", "serving.proxy:proxy_middlewares")
            ray.init(num_cpus=4, include_dashboard=False)
        service = serve_judge(service_config(), host="127.0.0.1", port=free_port())
        try:
            yield service
        finally:
            service.shutdown()
            # This fixture started Serve, so it stops it even on a Ray someone else started: a proxy left
            # on 127.0.0.1 would make later tests see a loopback bind that is not theirs.
            serve.shutdown()
            if started_ray:
                ray.shutdown()


@pytest.fixture(scope="module")
def aux_service(judge_service: object, secret_dir: Path) -> Iterator[object]:
    from serving.app import serve_judge

    url = judge_service.url  # type: ignore[attr-defined]
    port = int(url.rsplit(":", 1)[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEDRIFT_JUDGE_TOKENS_DIR", str(secret_dir))
        service = serve_judge(aux_config(), host="127.0.0.1", port=port)
        try:
            yield service
        finally:
            service.shutdown()


@pytest.fixture(scope="module")
def base_url(judge_service: object) -> str:
    return judge_service.url  # type: ignore[attr-defined]


@pytest.fixture()
def http(base_url: str, judge_token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30.0, headers={"Authorization": f"Bearer {judge_token}"}) as c:
        yield c


@pytest.fixture()
def anon(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30.0) as c:
        yield c
