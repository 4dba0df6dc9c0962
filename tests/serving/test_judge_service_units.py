"""Parts of the judge service that need no server: config, auth rules, the client's retry logic."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml

from serving.auth import (
    TOKEN_ENV,
    TOKEN_FILE_ENV,
    TOKENS_DIR_ENV,
    InsecureBindError,
    TokenChecker,
    TokenConfigError,
    check_bind,
    is_loopback,
    load_token,
    load_tokens,
)
from serving.client import JudgeAPIError, JudgeClient, RetryBudget
from serving.config import JudgeServiceConfig, RateLimits, load_config
from serving.ratelimit import RateLimiter

T1, T2, T3 = "token-one-0123456789abcdef", "token-two-0123456789abcdef", "token-three-0123456789abcde"


@pytest.fixture()
def no_token_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (TOKEN_ENV, TOKEN_FILE_ENV, TOKENS_DIR_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch

REPO = Path(__file__).resolve().parents[2]


# -- config ---------------------------------------------------------------------------------------------
def test_judge_yaml_is_a_valid_serve_config_without_secrets() -> None:
    from ray.serve.schema import ServeDeploySchema

    raw = (REPO / "serving" / "judge.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(raw)
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    assert app.import_path == "serving.app:build_app"
    cfg = load_config(REPO / "serving" / "judge.yaml")
    assert cfg.auth.required is True  # binds 0.0.0.0: must fail closed
    assert cfg.backend.autoscaling is not None
    assert "token" not in json.dumps(app.args).lower()


def test_build_app_from_yaml_args(no_token_env: pytest.MonkeyPatch) -> None:
    from ray.serve import Application

    from serving.app import build_app

    no_token_env.setenv(TOKEN_ENV, T1)
    args = yaml.safe_load((REPO / "serving" / "judge.yaml").read_text())["applications"][0]["args"]
    assert isinstance(build_app(args), Application)


def test_build_app_itself_fails_closed(no_token_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The builder is what `serve run`, `serve deploy` and the RayService call: it must refuse by itself.
    from serving.app import build_app

    with pytest.raises(TokenConfigError, match="build_app: auth.required is true but no token"):
        build_app({})
    # Auth off is accepted only when Serve's proxy demonstrably binds loopback; with no Serve running
    # here the bind is unknown, so it is refused as well.
    with pytest.raises(InsecureBindError, match="unknown address"):
        build_app({"auth": {"required": False}})
    no_token_env.setenv(TOKEN_ENV, "short")
    with pytest.raises(TokenConfigError, match="at least 16"):
        build_app({})
    no_token_env.setenv(TOKEN_FILE_ENV, str(tmp_path / "t"))
    with pytest.raises(TokenConfigError, match="both set"):
        build_app({})


def test_config_rejects_typos_and_unfillable_batches() -> None:
    with pytest.raises(ValueError, match="batchng"):
        JudgeServiceConfig.model_validate({"batchng": {}})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        JudgeServiceConfig.model_validate({"batching": {"max_batch_size": 64}, "backend": {"max_ongoing_requests": 8}})
    with pytest.raises(ValueError, match="min_replicas"):
        JudgeServiceConfig.model_validate({"backend": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}})


def test_replicas_or_autoscaling() -> None:
    fixed = JudgeServiceConfig.model_validate({"backend": {"num_replicas": 3}}).backend.serve_options()
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    auto = JudgeServiceConfig.model_validate(
        {"backend": {"autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}}
    ).backend.serve_options()
    assert "num_replicas" not in auto
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0}


# -- auth -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.com", "judge.local", ""])
def test_non_loopback_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InsecureBindError, match="SAFEDRIFT_JUDGE_TOKEN"):
        check_bind(host, None)
    check_bind(host, "a-token")


def test_unknown_bind_without_token_is_refused() -> None:
    with pytest.raises(InsecureBindError, match="unknown address"):
        check_bind(None, None)
    check_bind(None, {"default": T1})


def test_serve_judge_refuses_non_loopback_without_token(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    from serving.app import serve_judge

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    ray_was_up = ray.is_initialized()
    for host in ["0.0.0.0", "10.1.2.3", "judge.example.com"]:
        with pytest.raises(InsecureBindError, match="refusing to serve the judge"):
            serve_judge(REPO / "serving" / "judge.yaml", host=host, port=1)
    assert ray.is_initialized() == ray_was_up  # refused before starting anything


def test_token_sources(no_token_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert load_token() is None and load_tokens() == {}
    secret = tmp_path / "token"
    secret.write_text(T1 + "\n")
    no_token_env.setenv(TOKEN_FILE_ENV, str(secret))
    assert load_token() == T1 and load_tokens() == {"default": T1}
    no_token_env.setenv(TOKEN_ENV, T2)  # a stale env var next to the rotatable file: ambiguous, refused
    for load in (load_token, load_tokens):
        with pytest.raises(TokenConfigError, match=f"{TOKEN_FILE_ENV} and {TOKEN_ENV} are both set"):
            load()
    no_token_env.delenv(TOKEN_ENV)
    secret.write_text("   ")
    with pytest.raises(TokenConfigError, match="empty"):
        load_token()
    no_token_env.setenv(TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(TokenConfigError, match="cannot be read"):
        load_token()


def _secret_dir(root: Path, tokens: dict[str, str], generation: int) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from judge_service_cases import write_secret_dir

    return write_secret_dir(root, tokens, generation)


def test_tokens_dir_as_a_kubernetes_secret_mount(no_token_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = _secret_dir(tmp_path / "tokens", {"team-a": T1, "team-b": T2}, 0)
    no_token_env.setenv(TOKENS_DIR_ENV, str(root))
    assert load_tokens() == {"team-a": T1, "team-b": T2}  # ..data and ..gen0 are not clients
    (root / "..gen0" / "team-b").write_text(T1)
    with pytest.raises(TokenConfigError, match="share a token"):
        load_tokens()
    (root / "..gen0" / "team-b").write_text("")
    with pytest.raises(TokenConfigError, match="team-b is empty"):
        load_tokens()
    no_token_env.setenv(TOKENS_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(TokenConfigError, match="not a readable directory"):
        load_tokens()


def test_token_checker_names_clients_and_rotates_with_overlap(no_token_env: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match="auth.required"):
        TokenChecker(required=True)
    assert TokenChecker(required=False).check(None)  # no token, not required: open (loopback only)
    root = _secret_dir(tmp_path / "tokens", {"team-a": T1, "team-b": T2}, 0)
    no_token_env.setenv(TOKENS_DIR_ENV, str(root))
    now = [1000.0]
    checker = TokenChecker(required=True, reload_s=1.0, overlap_s=60.0, clock=lambda: now[0])
    assert checker.identify(f"Bearer {T1}") == "team-a" and checker.identify(f"bearer {T2}") == "team-b"
    for bad in [None, "", T1, "Bearer", f"Bearer {T1[:-1]}", f"Bearer {T1}x", f"Basic {T1}", "Bearer ß" + T1]:
        assert checker.identify(bad) is None and not checker.check(bad)
    _secret_dir(root, {"team-a": T3, "team-b": T2}, 1)  # team-a rotated, as the kubelet swaps ..data
    assert checker.identify(f"Bearer {T3}") is None  # not re-read before reload_s
    now[0] += 1.5
    assert checker.identify(f"Bearer {T3}") == "team-a"
    assert checker.identify(f"Bearer {T1}") == "team-a"  # the replaced token, inside the overlap
    now[0] += 61
    assert checker.identify(f"Bearer {T1}") is None and checker.identify(f"Bearer {T3}") == "team-a"
    _secret_dir(root, {"team-a": T3}, 2)  # team-b removed from the Secret: revoked at once
    now[0] += 1.5
    assert checker.identify(f"Bearer {T2}") is None and checker.clients == ["team-a"]
    (root / "..gen2" / "team-a").write_text("")  # an invalid file: nothing it cannot validate is kept
    now[0] += 1.5
    assert checker.identify(f"Bearer {T3}") is None and checker.enabled and not checker.check(f"Bearer {T3}")


# -- token reload fails closed (issue 30: revocation failed open) ---------------------------------------
def _checker(root: Path, env: pytest.MonkeyPatch) -> tuple[TokenChecker, list[float]]:
    env.setenv(TOKENS_DIR_ENV, str(root))
    now = [1000.0]
    return TokenChecker(required=False, reload_s=1.0, overlap_s=60.0, clock=lambda: now[0]), now


def test_deleting_the_only_clients_file_revokes_it_and_auth_stays_on(no_token_env: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    root = _secret_dir(tmp_path / "tokens", {"team-a": T1}, 0)
    checker, now = _checker(root, no_token_env)  # auth.required false: what kept the old token before
    _secret_dir(root, {}, 1)  # the Secret's last key removed
    now[0] += 1.5
    assert checker.identify(f"Bearer {T1}") is None
    assert checker.enabled and not checker.check(f"Bearer {T1}") and not checker.check(None)  # not "auth off"


@pytest.mark.parametrize("bad", [("Bad Name!", T3), ("team-c", "short")])
def test_a_removal_with_a_bad_entry_in_the_same_update_still_revokes(no_token_env: pytest.MonkeyPatch,
                                                                   tmp_path: Path, bad: tuple[str, str],
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    import logging

    root = _secret_dir(tmp_path / "tokens", {"team-a": T1, "team-b": T2}, 0)
    checker, now = _checker(root, no_token_env)
    _secret_dir(root, {"team-b": T2}, 1)  # team-a removed, and in the same reload period a bad entry added
    (root / "..gen1" / bad[0]).write_text(bad[1])
    (root / bad[0]).symlink_to(f"..data/{bad[0]}")
    now[0] += 1.5
    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert checker.identify(f"Bearer {T1}") is None  # was: every old token kept while any entry was bad
    assert checker.identify(f"Bearer {T2}") == "team-b" and checker.clients == ["team-b"]
    assert repr(bad[0]) in caplog.text or f"{TOKENS_DIR_ENV}/{bad[0]}" in caplog.text
    assert T1 not in caplog.text and T3 not in caplog.text


def test_token_files_must_be_private_regular_files_inside_the_directory(no_token_env: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    import os

    root = _secret_dir(tmp_path / "tokens", {"team-a": T1}, 0)
    no_token_env.setenv(TOKENS_DIR_ENV, str(root))
    outside = tmp_path / "elsewhere"
    outside.write_text(T2)
    (root / "team-x").symlink_to(outside)
    with pytest.raises(TokenConfigError, match="team-x links to .*outside"):
        load_tokens()
    (root / "team-x").unlink()
    os.chmod(root / "..gen0" / "team-a", 0o666)
    with pytest.raises(TokenConfigError, match=r"team-a is writable by group or others \(mode 0666\); run chmod go-w"):
        load_tokens()
    os.chmod(root / "..gen0" / "team-a", 0o644)
    (root / "team-d").mkdir()
    with pytest.raises(TokenConfigError, match="team-d is not a regular file"):
        load_tokens()
    (root / "team-d").rmdir()
    assert load_tokens() == {"team-a": T1}
    checker, now = _checker(root, no_token_env)
    os.chmod(root / "..gen0" / "team-a", 0o664)  # made group-writable while serving: revoked on reload
    now[0] += 1.5
    assert checker.identify(f"Bearer {T1}") is None


def test_single_token_file_removed_is_revoked(no_token_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text(T1)
    no_token_env.setenv(TOKEN_FILE_ENV, str(secret))
    now = [0.0]
    checker = TokenChecker(required=True, reload_s=1.0, clock=lambda: now[0])
    assert checker.identify(f"Bearer {T1}") == "default"
    secret.unlink()
    now[0] += 1.5
    assert checker.identify(f"Bearer {T1}") is None and not checker.check(f"Bearer {T1}")


def test_rate_limiter_buckets_per_client() -> None:
    now = [0.0]
    limits = RateLimits.model_validate({"default": {"requests_per_s": 2, "burst": 2},
                                        "clients": {"bulk": {"requests_per_s": 10, "burst": 5}}})
    rl = RateLimiter(limits, clock=lambda: now[0])
    assert [rl.acquire("a") for _ in range(2)] == [None, None]
    wait = rl.acquire("a")
    assert wait == pytest.approx(0.5) and RateLimiter.retry_after(wait) == "1"
    assert all(rl.acquire("bulk") is None for _ in range(5)) and rl.acquire("bulk") is not None
    assert rl.acquire("b") is None  # its own bucket
    now[0] += 0.5
    assert rl.acquire("a") is None
    assert RateLimiter(RateLimits()).acquire("anyone") is None  # no default: unlimited


# -- client ---------------------------------------------------------------------------------------------
def _ok(request: httpx.Request) -> httpx.Response:
    items = json.loads(request.content)["items"]
    return httpx.Response(200, json={"results": [
        {"label": "refused" if "sorry" in i["response"] else "complied", "score": 0.0, "judge": "j",
         "judge_version": "1"} for i in items]})


def _client(handler, **kw) -> JudgeClient:  # type: ignore[no-untyped-def]
    return JudgeClient("http://judge.test", token="t", transport=httpx.MockTransport(handler), backoff_s=0.001, **kw)


def test_client_batches_in_order_and_sends_token() -> None:
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer t"
        seen.append(len(json.loads(request.content)["items"]))
        return _ok(request)

    items = [{"prompt": "p", "response": "sorry" if i % 3 == 0 else "sure"} for i in range(25)]
    results = _client(handler, batch_size=10, max_concurrency=3).judge(items)
    assert sorted(seen) == [5, 10, 10]
    assert [r["label"] for r in results] == ["refused" if i % 3 == 0 else "complied" for i in range(25)]


def test_client_retries_503_and_connection_errors() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            raise httpx.ConnectError("refused", request=request)
        if calls["n"] == 2:
            return httpx.Response(503, json={"detail": "overloaded"}, headers={"Retry-After": "0"})
        return _ok(request)

    assert _client(handler, retries=3).judge([{"prompt": "p", "response": "sure"}])[0]["label"] == "complied"
    assert calls["n"] == 3


def test_client_gives_up_after_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"detail": "overloaded"})

    with pytest.raises(JudgeAPIError, match="HTTP 503 after 3 tries") as exc:
        _client(handler, retries=2).judge([{"prompt": "p", "response": "x"}])
    assert exc.value.status == 503


def test_client_does_not_retry_client_errors() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(413, json={"detail": "300 items exceed max_items=256", "limit": "max_items"})

    with pytest.raises(JudgeAPIError, match="max_items=256") as exc:
        _client(handler, retries=5).judge([{"prompt": "p", "response": "x"}])
    assert calls["n"] == 1 and exc.value.status == 413 and exc.value.limit == "max_items"


def test_client_does_not_retry_a_post_the_server_may_have_received() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        assert request.headers["x-deadline-s"] == "5"  # the server stops when this client stops waiting
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(JudgeAPIError, match="not retried"):
        _client(handler, retries=5, timeout=5.0).judge([{"prompt": "p", "response": "x"}])
    assert calls["n"] == 1


def test_client_retries_429_after_retry_after_within_a_budget() -> None:
    import time

    calls = {"n": 0}

    def limited(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            return httpx.Response(429, json={"detail": "rate limit", "limit": "rate_limits"}, headers={"Retry-After": "1"})
        return _ok(request)

    start = time.monotonic()
    assert _client(limited, retries=2).judge([{"prompt": "p", "response": "sure"}])[0]["label"] == "complied"
    assert time.monotonic() - start >= 0.9 and calls["n"] == 2  # Retry-After obeyed

    def down(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(503, json={"detail": "overloaded"})

    calls["n"] = 0
    client = _client(down, retries=3, retry_budget=RetryBudget(ratio=0.1, reserve=2.0))
    for _ in range(4):
        with pytest.raises(JudgeAPIError, match="HTTP 503"):
            client.judge([{"prompt": "p", "response": "x"}])
    # 4 requests, 3 retries allowed each, but the budget held 2 (+0.1 per request): 4 + 2 calls, not 16.
    assert calls["n"] == 6


def test_client_rejects_malformed_answers() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"results": []})

    with pytest.raises(JudgeAPIError, match="malformed"):
        _client(handler).judge([{"prompt": "p", "response": "x"}])


@pytest.mark.parametrize(("answer", "says"), [
    (httpx.Response(200, text="<html>gateway</html>", headers={"content-type": "text/html"}), "not JSON"),
    (httpx.Response(200, json={"results": ["refused"]}), "item 0: a str, not an object"),
    (httpx.Response(200, json={"results": [None]}), "item 0: a NoneType, not an object"),
    (httpx.Response(200, content=b'{"results": [{"label": "refused", "score": NaN, "judge": "j", "judge_version": "1"}]}',
                    headers={"content-type": "application/json"}), "score nan is not a number in [0, 1]"),
    (httpx.Response(200, json={"results": [{"label": "refused", "score": 7, "judge": "j", "judge_version": "1"}]}),
     "score 7 is not a number in [0, 1]"),
    (httpx.Response(200, json={"results": [{"label": "refused", "score": "0.1"}]}), "score '0.1'"),
])
def test_client_names_a_malformed_200_as_a_judge_api_error(answer: httpx.Response, says: str) -> None:
    """Issue 30: a non-JSON 200 or non-object results crashed with ValueError/AttributeError; NaN passed."""
    with pytest.raises(JudgeAPIError, match=re.escape(says)):
        _client(lambda request: answer).judge([{"prompt": "p", "response": "x"}])


def test_client_survives_a_non_ascii_retry_after() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "²".encode("latin-1")}, json={"detail": "slow down"})
        return httpx.Response(200, json={"results": [{"label": "refused", "score": 0.1, "judge": "j",
                                                      "judge_version": "1"}]})

    assert _client(handler).judge([{"prompt": "p", "response": "x"}])[0]["label"] == "refused"
    assert len(calls) == 2


# -- batching: the judge queue (merging, isolation, deadlines, cancellation) --------------------------------
def _queue_scenario(fn, requests, max_requests=8, deadlines=None, cancel=(), canary=None):  # type: ignore[no-untyped-def]
    """Submit ``requests`` while the first judge call is blocked, then release it; returns their outcomes."""
    import asyncio
    import time

    from serving.backend import JudgeQueue

    async def scenario() -> list:
        queue = JudgeQueue(fn, max_requests=max_requests, canary=canary)
        far = time.time() + 30
        first = asyncio.ensure_future(queue.submit([{"response": "hold"}], far))
        await asyncio.sleep(0.05)  # the first call is running (blocked in fn)
        rest = [asyncio.ensure_future(queue.submit(r, (deadlines or {}).get(i, far))) for i, r in enumerate(requests)]
        await asyncio.sleep(0.05)
        for i in cancel:
            rest[i].cancel()
        fn.gate.set()
        out = await asyncio.gather(first, *rest, return_exceptions=True)
        return [queue.stats, *out]

    return asyncio.run(scenario())


class _Judge:
    """A judge function that blocks its first call until ``gate`` is set and raises on "bad" items."""

    def __init__(self) -> None:
        import threading

        self.gate, self.calls = threading.Event(), []

    def __call__(self, items: list[dict]) -> list[dict]:
        self.gate.wait(5)
        self.calls.append([i["response"] for i in items])
        if any(i["response"] == "bad" for i in items):
            raise ValueError("cannot judge")
        return [{"label": i["response"]} for i in items]


def test_queue_merges_queued_requests_and_keeps_order() -> None:
    fn = _Judge()
    stats, first, *rest = _queue_scenario(fn, [[{"response": f"r{i}"}, {"response": f"r{i}b"}] for i in range(10)])
    assert first == [{"label": "hold"}]
    assert rest[3] == [{"label": "r3"}, {"label": "r3b"}]
    assert [len(c) for c in fn.calls] == [1, 16, 4]  # 10 queued requests merged: 8 (the cap), then 2


def test_queue_isolates_a_bad_item_to_its_own_request() -> None:
    from serving.errors import JudgeItemError

    fn = _Judge()
    requests = [[{"response": f"g{i}"}] for i in range(7)]
    requests.insert(3, [{"response": "ok"}, {"response": "ok2"}, {"response": "bad"}, {"response": "ok3"}])
    stats, _, *rest = _queue_scenario(fn, requests)
    assert isinstance(rest[3], JudgeItemError) and rest[3].index == 2 and "ValueError" in rest[3].reason
    assert [r for i, r in enumerate(rest) if i != 3] == [[{"label": f"g{i}"}] for i in range(7)]
    assert stats["splits"] >= 1 and stats["item_errors"] == 1
    assert len(fn.calls) <= 1 + 1 + 2 * 3 + 2 * 2  # bounded: halvings of 8 requests, then of 4 items


def test_queue_drops_cancelled_and_late_requests_unjudged() -> None:
    import time

    from serving.errors import DeadlineExceeded

    fn = _Judge()
    requests = [[{"response": "keep"}], [{"response": "cancelled"}], [{"response": "late"}]]
    stats, _, keep, cancelled, late = _queue_scenario(fn, requests, deadlines={2: time.time() + 0.02}, cancel=(1,))
    assert keep == [{"label": "keep"}] and isinstance(late, DeadlineExceeded)
    assert fn.calls == [["hold"], ["keep"]]  # neither the cancelled nor the late request reached the judge
    assert stats["cancelled"] == 1 and stats["expired"] == 1


def test_queue_blames_the_judge_not_the_item_for_a_contract_error() -> None:
    from serving.errors import JudgeContractError

    def fn(items: list[dict]) -> list[dict]:
        raise JudgeContractError("judge x returned 0 verdicts for 1 items")

    fn.gate = type("G", (), {"set": lambda self: None})()  # type: ignore[attr-defined]
    _, first, *rest = _queue_scenario(fn, [[{"response": "a"}]])
    assert isinstance(first, JudgeContractError) and isinstance(rest[0], JudgeContractError)


def test_queue_answers_judge_unavailable_when_the_judge_fails_on_a_known_good_item() -> None:
    """An always-failing judge: every request gets JudgeUnavailable (503), none an item error (was 422)."""
    from serving.errors import JudgeUnavailable

    class _Down(_Judge):
        def __call__(self, items: list[dict]) -> list[dict]:
            self.gate.wait(5)
            self.calls.append([i["response"] for i in items])
            raise ConnectionError("model server down")

    fn = _Down()
    stats, first, *rest = _queue_scenario(fn, [[{"response": f"r{i}"}] for i in range(8)],
                                          canary=[{"response": "canary"}])
    assert all(isinstance(r, JudgeUnavailable) and r.cause == "ConnectionError" for r in [first, *rest])
    assert stats["judge_failures"] == 9 and stats["item_errors"] == 0
    assert sum(c == ["canary"] for c in fn.calls) <= 2  # a failed check is believed a moment, not re-run per request


def test_queue_still_blames_an_item_that_fails_alone_when_the_canary_passes() -> None:
    from serving.errors import JudgeItemError

    fn = _Judge()
    stats, _, good, bad = _queue_scenario(fn, [[{"response": "g"}], [{"response": "ok"}, {"response": "bad"}]],
                                          canary=[{"response": "canary"}])
    assert good == [{"label": "g"}]
    assert isinstance(bad, JudgeItemError) and bad.index == 1
    assert stats["judge_failures"] == 0 and ["canary"] in fn.calls


def test_per_language_state_is_bounded_by_the_registry() -> None:
    """Issue 30: the judge's policy cache kept one entry per distinct `language` a client sent (about
    13 MiB per 51,200 made-up codes). Made-up codes are judged, but no longer kept."""
    import sys

    sys.path.insert(0, str(REPO))  # benchmarks/ is not installed: the service imports it from the checkout
    from benchmarks.serving.sim_judge import SimulatedModelJudge
    from pipelines.evaluate.judges import JudgeItem
    from pipelines.evaluate.judges.policy import Judging
    from pipelines.registries.languages import LANGUAGES

    judging = Judging(SimulatedModelJudge(call_s=0.0, item_s=0.0), back_translate=False)  # reads every language
    for i in range(20_000):
        judging.policy(f"x{i:05d}")
    judging.policy("es")
    assert len(judging._policies) <= len(LANGUAGES.names()) + 2  # noqa: SLF001  (registered codes, en, und)
    assert "es" in judging._policies  # noqa: SLF001
    judged = judging.judge_items([JudgeItem("How do I bake bread?", "I'm sorry, I can't help.", "zz-made-up")])
    assert judged[0].verdict.label_name == "refused" and "zz-made-up" not in judging._policies  # noqa: SLF001
