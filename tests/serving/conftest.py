"""One real judge service per test module (all HTTP tests live in one module, so it starts once): Ray
Serve on 127.0.0.1 at a free port. Module scope, so Ray is shut down before other test directories run.

The token reaches the replicas through a token file (the Kubernetes-secret path), so the fixture also
works when another fixture started Ray before this one (then that Ray is left running).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import httpx
import pytest
from judge_service_cases import free_port, service_config


@pytest.fixture(scope="session")
def judge_token() -> str:
    return "test-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def judge_service(judge_token: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    import ray
    from ray import serve

    from serving.app import serve_judge

    token_file = tmp_path_factory.mktemp("judge-secret") / "token"
    token_file.write_text(judge_token + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SAFEDRIFT_JUDGE_TOKEN", raising=False)
        mp.setenv("SAFEDRIFT_JUDGE_TOKEN_FILE", str(token_file))
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(num_cpus=4, include_dashboard=False)
        service = serve_judge(service_config(), host="127.0.0.1", port=free_port())
        try:
            yield service
        finally:
            service.shutdown()
            if started_ray:
                serve.shutdown()
                ray.shutdown()


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
