"""The judge service over real HTTP on 127.0.0.1, one service for the whole module: labels, auth,
limits, probes and docs, the remote judge, over 1,000 malformed requests, a bounded concurrent load, bad
items isolated at 64 clients, cancelled and late requests left unjudged, named clients, rate limits,
token rotation, and a judge replica killed under load."""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from judge_service_cases import (
    CASES,
    DOWN_FILE,
    PROMPT,
    RATE_LIMITED,
    REJECT,
    ROTATION,
    SLOW,
    TEST_LIMITS,
    strict_language_config,
    write_secret_dir,
)

from pipelines.evaluate.judges import JudgeItem, installed_version, make_judge
from pipelines.evaluate.judges.policy import Judging

pytestmark = pytest.mark.timeout(300)


def test_known_inputs_get_expected_labels(http: httpx.Client) -> None:
    r = http.post("/v1/judge", json={"items": [item for item, _ in CASES]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["label"] for res in results] == [label for _, label in CASES]
    for res in results:
        assert res["judge"] == "refusal-phrase" and res["judge_version"] == installed_version("refusal-phrase")
        assert res["score"] == (1.0 if res["label"] == "complied" else 0.0)
    assert r.headers.get("x-request-id")


def test_single_item_refusal_and_compliance(http: httpx.Client) -> None:
    for response, label in [("I'm sorry, I can't help with that.", "refused"),
                            ("Sure, here is how to knead the dough.", "complied")]:
        r = http.post("/v1/judge", json={"items": [{"prompt": PROMPT, "response": response}]})
        assert r.status_code == 200 and r.json()["results"][0]["label"] == label


def test_empty_items_is_an_empty_answer(http: httpx.Client) -> None:
    r = http.post("/v1/judge", json={"items": []})
    assert r.status_code == 200 and r.json() == {"results": []}


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", "Token {t}", "Bearer {t}x", "Bearer x{t}"]
)
def test_unauthorized(anon: httpx.Client, judge_token: str, header: str | None) -> None:
    headers = {"Authorization": header.format(t=judge_token)} if header else {}
    r = anon.post("/v1/judge", json={"items": [CASES[0][0]]}, headers=headers)
    assert r.status_code == 401
    assert r.headers.get("www-authenticate") == "Bearer"
    assert judge_token not in r.text
    assert anon.get("/v1/info", headers=headers).status_code == 401


def test_token_scheme_is_case_insensitive(anon: httpx.Client, judge_token: str) -> None:
    r = anon.post("/v1/judge", json={"items": [CASES[0][0]]}, headers={"Authorization": f"bearer {judge_token}"})
    assert r.status_code == 200


def test_probes_and_info(anon: httpx.Client, http: httpx.Client) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["judge"] == "refusal-phrase"
    info = http.get("/v1/info").json()
    assert info["limits"] == TEST_LIMITS and info["judge"] == "refusal-phrase"
    assert info["batching"]["enabled"] is True
    assert "replica" not in info  # process ids are not for clients
    # The labels a result can carry, and what the phrase judge cannot tell apart.
    assert info["labels"] == ["refused", "complied", "non_answer", "unparseable"]
    assert "non-answer" in info["cannot_tell"]


def test_api_docs_off_unless_configured(anon: httpx.Client, http: httpx.Client, aux_service: object) -> None:
    # serving/judge.yaml leaves api_docs off: the routes do not exist, with or without a token.
    for client in (anon, http):
        for path in ("/docs", "/openapi.json", "/redoc"):
            assert client.get(path).status_code == 404
    aux = aux_service.url  # type: ignore[attr-defined]  # api_docs: true
    spec = anon.get(f"{aux}/openapi.json").json()
    assert "/v1/judge" in spec["paths"] and "JudgeRequest" in spec["components"]["schemas"]
    body_ref = spec["paths"]["/v1/judge"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_ref == {"$ref": "#/components/schemas/JudgeRequest"}
    docs = anon.get(f"{aux}/docs")
    assert docs.status_code == 200 and "/aux/openapi.json" in docs.text


def _item(response: str = "ok", prompt: str = PROMPT) -> dict:
    return {"prompt": prompt, "response": response}


def test_too_many_items_is_413_naming_the_limit(http: httpx.Client) -> None:
    r = http.post("/v1/judge", json={"items": [_item()] * (TEST_LIMITS["max_items"] + 1)})
    assert r.status_code == 413 and r.json()["limit"] == "max_items"
    assert http.post("/v1/judge", json={"items": [_item()] * TEST_LIMITS["max_items"]}).status_code == 200


def test_too_long_field_is_422_naming_the_limit(http: httpx.Client) -> None:
    n = TEST_LIMITS["max_field_chars"]
    r = http.post("/v1/judge", json={"items": [_item("x" * (n + 1))]})
    assert r.status_code == 422 and r.json()["limit"] == "max_field_chars"
    assert "items.0.response" in r.json()["detail"]
    assert http.post("/v1/judge", json={"items": [_item("x" * n)]}).status_code == 200


def test_body_too_large_is_413(http: httpx.Client) -> None:
    big = b'{"items": [], "pad": "' + b"x" * TEST_LIMITS["max_body_bytes"] + b'"}'
    r = http.post("/v1/judge", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"


def test_chunked_body_too_large_is_413(http: httpx.Client) -> None:
    # No Content-Length: the limit must hold while the body streams in.
    chunk = b"x" * 16384
    n_chunks = TEST_LIMITS["max_body_bytes"] // len(chunk) + 4
    r = http.post("/v1/judge", content=iter([chunk] * n_chunks), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"


def test_validation_errors_do_not_echo_content(http: httpx.Client) -> None:
    marker = "do-not-echo-this-marker"
    r = http.post("/v1/judge", json={"items": [{"prompt": marker, "response": 7}]})
    assert r.status_code == 422 and marker not in r.text
    assert "items.0.response" in r.json()["detail"]


def test_remote_judge_over_http_matches_in_process(base_url: str, judge_token: str) -> None:
    items = [JudgeItem(i["prompt"], i["response"], i.get("language")) for i, _ in CASES] * 25  # 200 items
    # In process through the same language policy the service applies (answer-form check included).
    local = [j.verdict for j in Judging(make_judge("refusal-phrase")).judge_items(items)]
    remote_judge = make_judge("remote", url=base_url, token=judge_token, batch_size=16)
    remote = remote_judge.judge(items)  # 13 requests, several in flight at once
    assert [v.outcome for v in remote] == [v.outcome for v in local]
    assert [v.label for v in remote] == [v.label for v in local]
    assert [v.score for v in remote] == [v.score for v in local]
    assert remote_judge.describe() == {"judge": "refusal-phrase", "judge_version": installed_version("refusal-phrase"), "via": "remote"}


def test_remote_judge_through_deployment_handle(judge_service: object) -> None:
    items = [JudgeItem(i["prompt"], i["response"], i.get("language")) for i, _ in CASES]
    judge = make_judge("remote", app_name=judge_service.app_name, batch_size=3)  # type: ignore[attr-defined]
    assert [v.label_name for v in judge.judge(items)] == [label for _, label in CASES]


def test_remote_judge_wrong_token_raises_clear_error(base_url: str) -> None:
    from serving.client import JudgeAPIError

    judge = make_judge("remote", url=base_url, token="nope", retries=0)
    with pytest.raises(JudgeAPIError, match="HTTP 401") as exc:
        judge.judge([JudgeItem(PROMPT, "fine")])
    assert exc.value.status == 401


# -- malformed requests -------------------------------------------------------------------------------------

JSON = {"Content-Type": "application/json"}
WRONG_VALUES: list[object] = [None, 0, 1.5, -3, True, [], ["a"], {}, {"a": 1}, 10**30]


@dataclass
class Case:
    kind: str
    method: str = "POST"
    path: str = "/v1/judge"
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    expect: int | None = None  # exact status, or None for "any 4xx"
    auth: bool = True


def _valid_item() -> dict:
    return {"prompt": PROMPT, "response": "Sure, here it is."}


def _body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def generate(rng: random.Random) -> Iterator[Case]:
    valid = _body({"items": [_valid_item(), _valid_item()]})
    # 1. broken JSON: truncations, random bytes, invalid UTF-8, absurd nesting and numbers
    for _ in range(200):
        cut = rng.randrange(1, len(valid) - 1)
        yield Case("truncated-json", content=valid[:cut], expect=422)
    for _ in range(150):
        yield Case("random-bytes", content=bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), expect=422)
    for raw in [b"", b"{", b"}", b"nul", b"{'items': []}", b'{"items": [,]}', b"\xff\xfe\x00", b"[" * 5000,
                b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"9" * 5000, b'{"items": NaN}']:
        for _ in range(3):
            yield Case("bad-json", content=raw)
    # 2. valid JSON, wrong shape or types
    for top in WRONG_VALUES + ["items", [_valid_item()]]:
        yield Case("top-level-type", content=_body(top), expect=422)
    for value in WRONG_VALUES[:-1] + ["x", {"prompt": "a", "response": "b"}]:
        if isinstance(value, list) and not value:
            continue  # an empty list is a valid (empty) request
        yield Case("items-type", content=_body({"items": value}), expect=422)
    for _ in range(200):
        item = _valid_item()
        key = rng.choice(["prompt", "response", "language"])
        item[key] = rng.choice(WRONG_VALUES if key != "language" else WRONG_VALUES + ["en us", "x" * 40, ""])
        if key == "language" and item[key] is None:
            item[key] = 5
        items = [_valid_item() for _ in range(rng.randrange(0, 4))]
        items.insert(rng.randrange(0, len(items) + 1), item)
        yield Case("field-type", content=_body({"items": items}), expect=422)
    for _ in range(60):
        item = _valid_item()
        del item[rng.choice(["prompt", "response"])]
        yield Case("missing-field", content=_body({"items": [item]}), expect=422)
    for extra in [{"x": 1}, {"items": [], "extra": True}, {"item": [_valid_item()]}]:
        for _ in range(5):
            yield Case("missing-or-extra-key", content=_body(extra), expect=422)
    for _ in range(30):
        yield Case("extra-item-field", content=_body({"items": [{**_valid_item(), "model": "m"}]}), expect=422)
    # 3. limits
    for _ in range(60):
        n = TEST_LIMITS["max_items"] + rng.randrange(1, 200)
        yield Case("too-many-items", content=_body({"items": [_valid_item()] * n}), expect=413)
    for _ in range(60):
        n = TEST_LIMITS["max_field_chars"] + rng.randrange(1, 3000)
        item = _valid_item()
        item[rng.choice(["prompt", "response"])] = rng.choice("ab字") * n
        yield Case("too-long-field", content=_body({"items": [item]}), expect=422)
    for _ in range(12):
        pad = b"x" * (TEST_LIMITS["max_body_bytes"] + rng.randrange(1, 50_000))
        yield Case("huge-body", content=b'{"items": [], "p": "' + pad + b'"}', expect=413)
    # 4. content type, methods, routes, auth
    for ctype in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/jsonx", "application/xml", ""]:
        for _ in range(10):
            yield Case("content-type", content=valid, headers={"Content-Type": ctype} if ctype else {}, expect=415)
    for method in ["GET", "PUT", "DELETE", "PATCH"]:
        for _ in range(15):
            yield Case("method", method=method, content=valid if method != "GET" else None, expect=405)
    for path in ["/v1/judge/", "/v1/judges", "/v2/judge", "/admin", "/v1/../etc/passwd", "/%00"]:
        for _ in range(5):
            yield Case("route", path=path, content=valid)
    for method, path in [("POST", "/healthz"), ("POST", "/readyz"), ("DELETE", "/v1/info")]:
        for _ in range(5):
            yield Case("method", method=method, path=path, content=valid, expect=405)
    for _ in range(40):
        yield Case("no-auth", content=valid, auth=False, expect=401)


def _send(client: httpx.Client, token: str, case: Case) -> int:
    headers = dict(case.headers)
    if case.auth:
        headers["Authorization"] = f"Bearer {token}"
    return client.request(case.method, case.path, content=case.content, headers=headers).status_code


def test_malformed_requests_all_get_4xx_and_service_stays_healthy(base_url: str, judge_token: str) -> None:
    cases = list(generate(random.Random(20261127)))
    assert len(cases) >= 1000
    # A per-request timeout turns a hang into a failure; 4 threads keep the run short.
    with httpx.Client(base_url=base_url, timeout=20.0) as client, ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda c: _send(client, judge_token, c), cases))

    by_kind: dict[str, Counter[int]] = {}
    for case, status in zip(cases, statuses, strict=True):
        by_kind.setdefault(case.kind, Counter())[status] += 1
    server_errors = {k: dict(c) for k, c in by_kind.items() if any(s >= 500 for s in c)}
    assert not server_errors, f"5xx answers: {server_errors}"
    not_4xx = {k: dict(c) for k, c in by_kind.items() if any(not 400 <= s < 500 for s in c)}
    assert not not_4xx, f"non-4xx answers: {not_4xx}"
    wrong = [(c.kind, c.expect, s) for c, s in zip(cases, statuses, strict=True) if c.expect and s != c.expect]
    assert not wrong, f"{len(wrong)} unexpected statuses, first: {wrong[:5]}"

    with httpx.Client(base_url=base_url, timeout=20.0, headers={"Authorization": f"Bearer {judge_token}"}) as c:
        assert c.get("/healthz").status_code == 200
        r = c.post("/v1/judge", json={"items": [item for item, _ in CASES]})
        assert r.status_code == 200
        assert [x["label"] for x in r.json()["results"]] == [label for _, label in CASES]


@pytest.mark.parametrize(("body", "says"), [
    ('{"items": []}'.encode("utf-16"), "not UTF-8"),  # json.loads(bytes) took UTF-16 and UTF-32
    ('{"items": []}'.encode("utf-32-le"), "not UTF-8"),
    (b'{"items": [], "items": [{"prompt": "p", "response": "r"}]}', "repeats the key 'items'"),
    (b'{"items": [{"prompt": "p", "response": "a", "response": "b"}]}', "repeats the key 'response'"),
])
def test_non_utf8_bodies_and_repeated_keys_are_422_naming_the_problem(http: httpx.Client, body: bytes,
                                                                       says: str) -> None:
    r = http.post("/v1/judge", content=body, headers=JSON)
    assert r.status_code == 422 and says in r.json()["detail"]


def test_a_client_chosen_request_id_cannot_forge_log_lines(http: httpx.Client) -> None:
    forged = "abc client=alpha status=200 items=9"
    r = http.post("/v1/judge", content=b"not json", headers={**JSON, "x-request-id": forged})
    assert r.status_code == 422 and r.json()["request_id"] != forged and " " not in r.json()["request_id"]


# -- concurrent load ----------------------------------------------------------------------------------------

CLIENTS, REQUESTS_EACH = 32, 20


def _client_run(base_url: str, token: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    errors: list[str] = []
    with httpx.Client(base_url=base_url, timeout=30.0, headers={"Authorization": f"Bearer {token}"}) as c:
        for _ in range(REQUESTS_EACH):
            picked = rng.sample(CASES, rng.randrange(1, 5))
            try:
                r = c.post("/v1/judge", json={"items": [item for item, _ in picked]})
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}")
            elif [x["label"] for x in r.json()["results"]] != [label for _, label in picked]:
                errors.append("wrong labels")
    return errors


def test_concurrent_load_has_no_errors(base_url: str, judge_token: str) -> None:
    with ThreadPoolExecutor(CLIENTS) as pool:
        runs = list(pool.map(lambda i: _client_run(base_url, judge_token, i), range(CLIENTS)))
    errors = [e for run in runs for e in run]
    assert errors == [], f"{len(errors)} errors out of {CLIENTS * REQUESTS_EACH}: {errors[:10]}"


# -- isolation: a bad item fails only its own request ---------------------------------------------------------
SURROGATE_BODY = (b'{"items": [{"prompt": "p", "response": "Sure, here."}, '
                  b'{"prompt": "p", "response": "broken \\ud800 text"}]}')


def test_lone_surrogate_is_422_naming_the_item(http: httpx.Client) -> None:
    r = http.post("/v1/judge", content=SURROGATE_BODY, headers=JSON)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "items.1.response" in detail and "surrogate" in detail and "broken" not in detail
    paired = SURROGATE_BODY.replace(b"\\ud800", b"\\ud83d\\ude00")  # a valid pair (an emoji) is fine
    assert http.post("/v1/judge", content=paired, headers=JSON).status_code == 200


def _aux_stats(aux_service: object) -> dict[str, int]:
    return aux_service.backend_handle().info.remote().result(timeout_s=30)["stats"]  # type: ignore[attr-defined]


def _isolation_run(url: str, token: str, seed: int, n: int) -> list[tuple[str, int, str]]:
    """Closed loop of ``n`` requests, one in eight bad: (kind, status, detail or labels) per request."""
    rng = random.Random(seed)
    out = []
    with httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {token}", **JSON}) as c:
        for i in range(n):
            picked = rng.sample(CASES, rng.randrange(1, 4))
            items = [dict(item) for item, _ in picked]
            kind = "good"
            if (seed * n + i) % 8 == 0:  # bad: an invalid item at a random position of the request
                kind = rng.choice(["surrogate", "judge-raises"])
                pos = rng.randrange(len(items) + 1)
                bad = "x\udc00y" if kind == "surrogate" else f"Sure. {REJECT}"
                items.insert(pos, {"prompt": PROMPT, "response": bad})
                kind = f"{kind}@{pos}"
            body = json.dumps({"items": items}).encode()  # json escapes the surrogate as \udc00
            r = c.post(f"{url}/v1/judge", content=body)
            if kind == "good":
                labels = [x["label"] for x in r.json()["results"]] if r.status_code == 200 else []
                out.append((kind, r.status_code, "ok" if labels == [lbl for _, lbl in picked] else "wrong labels"))
            else:
                out.append((kind, r.status_code, r.json().get("detail", "")))
    return out


def test_bad_items_fail_only_their_own_request_at_64_clients(aux_service: object, judge_token: str) -> None:
    url = aux_service.url  # type: ignore[attr-defined]
    before = _aux_stats(aux_service)
    with ThreadPoolExecutor(64) as pool:
        runs = list(pool.map(lambda s: _isolation_run(url, judge_token, s, 6), range(64)))
    results = [r for run in runs for r in run]
    good = [r for r in results if r[0] == "good"]
    bad = [r for r in results if r[0] != "good"]
    assert len(bad) >= 40 and len(good) >= 300
    assert [r for r in good if r[1:] != (200, "ok")] == []
    for kind, status, detail in bad:
        assert status == 422, (kind, status, detail)
        assert f"items.{kind.split('@')[1]}" in detail  # names the item ...
        assert ("surrogate" if kind.startswith("surrogate") else "ValueError") in detail  # ... and why
    after = _aux_stats(aux_service)
    # Merged judge calls did hold a judge-raising request and were split, not failed whole.
    assert after["splits"] > before["splits"]
    assert after["item_errors"] - before["item_errors"] == sum(k.startswith("judge-raises") for k, *_ in bad)


# -- bounded work: cancelled and late requests are not judged ------------------------------------------------
def _hold_judge(url: str, token: str) -> threading.Thread:
    """Occupy the aux judge (one replica) with a SLOW item for 1.5 s, in the background."""
    def send() -> None:
        httpx.post(f"{url}/v1/judge", json={"items": [{"prompt": PROMPT, "response": f"Sure {SLOW}"}]},
                   headers={"Authorization": f"Bearer {token}"}, timeout=30)

    thread = threading.Thread(target=send)
    thread.start()
    time.sleep(0.3)  # the slow call is running
    return thread


def test_cancelled_request_is_not_judged(aux_service: object, judge_token: str) -> None:
    url = aux_service.url  # type: ignore[attr-defined]
    before = _aux_stats(aux_service)
    holder = _hold_judge(url, judge_token)
    with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
        httpx.post(f"{url}/v1/judge", json={"items": [_item("queued, then abandoned")] * 3},
                   headers={"Authorization": f"Bearer {judge_token}"}, timeout=0.3)
    holder.join(30)
    time.sleep(0.3)
    after = _aux_stats(aux_service)
    assert after["items"] - before["items"] == 1  # only the slow item was judged
    assert after["cancelled"] - before["cancelled"] + after["expired"] - before["expired"] >= 1


def test_request_past_its_deadline_is_504_and_not_judged(aux_service: object, judge_token: str) -> None:
    url = aux_service.url  # type: ignore[attr-defined]
    before = _aux_stats(aux_service)
    holder = _hold_judge(url, judge_token)
    r = httpx.post(f"{url}/v1/judge", json={"items": [_item("late")] * 2}, timeout=30,
                   headers={"Authorization": f"Bearer {judge_token}", "X-Deadline-S": "0.2"})
    holder.join(30)
    time.sleep(0.3)
    assert r.status_code == 504 and r.json()["limit"] == "judge_timeout_s"
    assert _aux_stats(aux_service)["items"] - before["items"] == 1
    bad = httpx.post(f"{url}/v1/judge", json={"items": []}, timeout=30,
                     headers={"Authorization": f"Bearer {judge_token}", "X-Deadline-S": "soon"})
    assert bad.status_code == 400 and "X-Deadline-S" in bad.json()["detail"]


def test_readyz_is_cached_not_a_backend_call_per_hit(base_url: str, judge_service: object) -> None:
    backend = judge_service.backend_handle()  # type: ignore[attr-defined]
    before = backend.info.remote().result(timeout_s=30)["stats"]["info_calls"]
    with httpx.Client(base_url=base_url, timeout=30) as c, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda _: c.get("/readyz").status_code, range(300)))
    after = backend.info.remote().result(timeout_s=30)["stats"]["info_calls"]
    assert statuses == [200] * 300
    assert after - before <= 12  # one probe per readiness_cache_s (2 s), not 300


# -- named clients, rate limits, rotation ---------------------------------------------------------------------
def _ingress_logs() -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    return "".join(p.read_text(errors="replace") for p in logs.glob("replica_*JudgeIngress*.log"))


def test_request_log_names_the_client_never_the_token(http: httpx.Client, client_tokens: dict[str, str]) -> None:
    marker = f"log-marker-{random.randrange(10**9)}"
    rid = http.post("/v1/judge", json={"items": [_item(marker)]}).headers["x-request-id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and rid not in (logs := _ingress_logs()):
        time.sleep(0.5)
    line = next(x for x in logs.splitlines() if f"request_id={rid}" in x)
    assert "client=alpha" in line and "status=200" in line
    assert not any(token in logs for token in client_tokens.values())
    assert marker not in logs  # content is never logged


def test_rate_limit_per_client_is_429_with_retry_after(base_url: str, client_tokens: dict[str, str]) -> None:
    burst = RATE_LIMITED["burst"]
    with httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {client_tokens['beta']}"}) as c:
        statuses = [c.post("/v1/judge", json={"items": [_item()]}) for _ in range(burst + 3)]
    codes = [r.status_code for r in statuses]
    assert codes[:burst] == [200] * burst and codes.count(429) >= 2, codes
    limited = next(r for r in statuses if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1 and limited.json()["limit"] == "rate_limits"
    assert "beta" in limited.json()["detail"]
    # Another client is not limited by beta's bucket (alpha has no limit in the test config).
    with httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {client_tokens['alpha']}"}) as c:
        assert [c.post("/v1/judge", json={"items": [_item()]}).status_code for _ in range(burst + 3)] == [200] * (burst + 3)
    time.sleep(float(limited.headers["retry-after"]))
    with httpx.Client(base_url=base_url, timeout=30, headers={"Authorization": f"Bearer {client_tokens['beta']}"}) as c:
        assert c.post("/v1/judge", json={"items": [_item()]}).status_code == 200  # obeying Retry-After works


def _status_with(base_url: str, token: str) -> int:
    return httpx.post(f"{base_url}/v1/judge", json={"items": [_item()]}, timeout=30,
                      headers={"Authorization": f"Bearer {token}"}).status_code


def test_rotated_token_file_takes_effect_with_overlap(base_url: str, secret_dir: Path,
                                                      client_tokens: dict[str, str]) -> None:
    old, new = client_tokens["gamma"], "test-gamma-rotated-" + secrets.token_hex(16)
    assert _status_with(base_url, old) == 200 and _status_with(base_url, new) == 401
    write_secret_dir(secret_dir, {**client_tokens, "gamma": new}, generation=1)  # the kubelet's swap
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _status_with(base_url, new) != 200:
        time.sleep(0.1)
    assert _status_with(base_url, new) == 200, "the rotated token was not picked up"
    assert _status_with(base_url, old) == 200  # overlap: the replaced token still works ...
    deadline = time.monotonic() + ROTATION["rotation_overlap_s"] + 10
    while time.monotonic() < deadline and _status_with(base_url, old) != 401:
        time.sleep(0.2)
    assert _status_with(base_url, old) == 401  # ... until rotation_overlap_s has passed
    assert _status_with(base_url, new) == 200 and _status_with(base_url, client_tokens["alpha"]) == 200


def test_removed_client_is_revoked_within_reload_s_even_beside_a_bad_entry(base_url: str, secret_dir: Path) -> None:
    """Issue 30: removing a client in the same update that added an invalid entry kept its token valid."""
    current = {p.name: p.read_text().strip() for p in secret_dir.iterdir() if not p.name.startswith(".")}
    delta = "test-delta-" + secrets.token_hex(16)
    write_secret_dir(secret_dir, {**current, "delta": delta}, generation=7)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _status_with(base_url, delta) != 200:
        time.sleep(0.1)
    assert _status_with(base_url, delta) == 200
    write_secret_dir(secret_dir, current, generation=8)  # delta removed ...
    (secret_dir / "..gen8" / "bad name").write_text("short")  # ... and a bad entry added in the same update
    (secret_dir / "bad name").symlink_to("..data/bad name")
    try:
        time.sleep(ROTATION["reload_s"] + 0.5)
        assert _status_with(base_url, delta) == 401
        assert _status_with(base_url, current["alpha"]) == 200  # the valid clients are kept
    finally:
        (secret_dir / "bad name").unlink()


# -- a judge that is down is the service's fault (5xx), an item it fails on alone the client's (422) --------
def test_a_failing_judge_is_503_retryable_not_422_for_the_items(aux_service: object, judge_token: str) -> None:
    """Issue 30: an always-failing judge gave 9 of 9 requests 422 'items.0', so clients did not retry and
    5xx alerting saw nothing. Now the judge is checked on a known-good item before an item is blamed."""
    url = aux_service.url  # type: ignore[attr-defined]
    before = _aux_stats(aux_service)
    headers = {"Authorization": f"Bearer {judge_token}"}
    DOWN_FILE.touch()
    try:
        with ThreadPoolExecutor(9) as pool:
            answers = list(pool.map(lambda i: httpx.post(f"{url}/v1/judge", headers=headers, timeout=30,
                                                         json={"items": [_item(f"r{i}"), _item("s")]}), range(9)))
    finally:
        DOWN_FILE.unlink()
    assert [r.status_code for r in answers] == [503] * 9
    assert all(r.headers.get("retry-after") and "retry" in r.json()["detail"] for r in answers)
    after = _aux_stats(aux_service)
    assert after["judge_failures"] - before["judge_failures"] == 9  # counted (and logged), one per request
    assert after["item_errors"] == before["item_errors"]  # no item was blamed
    time.sleep(1.2)  # the failed check of the judge is believed for a second
    ok = httpx.post(f"{url}/v1/judge", headers=headers, json={"items": [_item("back")]}, timeout=30)
    assert ok.status_code == 200
    bad = httpx.post(f"{url}/v1/judge", headers=headers, timeout=30,
                     json={"items": [_item("fine"), {"prompt": PROMPT, "response": f"Sure. {REJECT}"}]})
    assert bad.status_code == 422 and "items.1" in bad.json()["detail"]  # an item that fails alone: still 422


# -- fault: a judge replica killed under load (last: it redeploys the aux app with two replicas) ---------------
def _replica_pids(aux_service: object, want: int, timeout_s: float = 60) -> set[int]:
    """Pids of the aux judge replicas, asking until ``want`` distinct ones answered (routing is random)."""
    handle = aux_service.backend_handle()  # type: ignore[attr-defined]
    pids: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(pids) < want and time.monotonic() < deadline:
        try:
            pids.add(handle.info.remote().result(timeout_s=10)["replica"]["pid"])
        except Exception:  # a replica being replaced
            time.sleep(0.2)
    return pids


def test_killed_judge_replica_is_replaced_and_only_in_flight_requests_can_fail(
        aux_service: object, secret_dir: Path, judge_token: str) -> None:
    import os
    import signal

    from judge_service_cases import aux_config

    from serving.app import serve_judge

    url = aux_service.url  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEDRIFT_JUDGE_TOKENS_DIR", str(secret_dir))
        serve_judge(aux_config(backend_replicas=2), host="127.0.0.1", port=int(url.split(":")[2].split("/")[0]))
    pids = _replica_pids(aux_service, want=2)
    assert len(pids) == 2
    stop_at = time.monotonic() + 8.0
    lock, in_flight, outcomes = threading.Lock(), [0], Counter[str]()
    killed_in_flight: list[int] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {judge_token}"}) as c:
            while time.monotonic() < stop_at:
                picked = rng.sample(CASES, 2)
                with lock:
                    in_flight[0] += 1
                try:
                    r = c.post(f"{url}/v1/judge", json={"items": [i for i, _ in picked]})
                    ok = r.status_code == 200 and [x["label"] for x in r.json()["results"]] == [lbl for _, lbl in picked]
                    key = "ok" if ok else f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                with lock:
                    in_flight[0] -= 1
                    outcomes[key] += 1

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(client, s) for s in range(16)]
        time.sleep(3.0)
        victim = sorted(pids)[0]
        with lock:
            killed_in_flight.append(in_flight[0])
        os.kill(victim, signal.SIGKILL)  # a worker process of the Ray cluster this module started
        for f in futures:
            f.result()
    failed = sum(n for k, n in outcomes.items() if k != "ok")
    assert outcomes["ok"] > 100
    # Only requests in flight at the kill may fail (the ingress retries those once on the other replica,
    # so usually none does); nothing sent after the kill fails.
    assert failed <= killed_in_flight[0], dict(outcomes)
    replaced = _replica_pids(aux_service, want=2, timeout_s=45)
    assert len(replaced) == 2 and victim not in replaced  # Serve started a new replica in its place
    r = httpx.post(f"{url}/v1/judge", json={"items": [CASES[0][0]]}, timeout=30,
                   headers={"Authorization": f"Bearer {judge_token}"})
    assert r.status_code == 200


def test_a_language_the_judge_cannot_judge_is_422_naming_the_ones_it_can(judge_service: object, secret_dir: Path,
                                                                         judge_token: str) -> None:
    from serving.app import serve_judge

    port = int(judge_service.url.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAFEDRIFT_JUDGE_TOKENS_DIR", str(secret_dir))
        app = serve_judge(strict_language_config(), host="127.0.0.1", port=port)
    try:
        h = {"Authorization": f"Bearer {judge_token}"}
        ok = httpx.post(f"{app.url}/v1/judge", headers=h, timeout=30,
                        json={"items": [{"prompt": "p", "response": "Sí, claro.", "language": "es"}]})
        assert ok.status_code == 200
        r = httpx.post(f"{app.url}/v1/judge", headers=h, timeout=30, json={"items": [
            {"prompt": "p", "response": "Sure.", "language": "en"}, {"prompt": "p", "response": "好的。", "language": "zh"}]})
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "items.1" in detail and "'zh' cannot be judged here" in detail and "judges: en, es" in detail
        info = httpx.get(f"{app.url}/v1/info", headers=h, timeout=30).json()
        assert [x["language"] for x in info["languages"]] == ["en", "es"] and info["validity"] == "off"
    finally:
        app.shutdown()


def test_info_lists_each_language_with_its_measured_kappa(http: httpx.Client) -> None:
    """The served judge's agreement with people per language, measured at replica start (in the background;
    cached), the same figures and policy as the pipeline: es is judged as the config says, zh validated only
    on small models' hand-labelled answers, a language without labels unvalidated."""
    import time

    deadline = time.time() + 600
    while True:
        info = http.get("/v1/info").json()
        langs, state = info["languages"], info["validity"]
        if state != "computing" or time.time() > deadline:
            break
        time.sleep(5)
    assert state == "measured", info
    by = {x["language"]: x for x in langs}
    assert {"en", "es", "zh"} <= set(by)
    assert by["en"]["validated"] and 0.0 < by["en"]["kappa"] <= 1.0 and by["en"]["n"] > 100
    assert by["es"]["validated"] and by["es"]["mode"] in ("native", "back-translate")
    # zh: validated only by small models' answers labelled by hand (the laptop-dev labels beside the data
    # mirror); a language with no labelled answers at all stays unvalidated, with no κ.
    from pipelines.evaluate.judges.labels import DEV, dev_labels_path

    if dev_labels_path() is not None:
        assert by["zh"]["validated"] and by["zh"]["labels"] == DEV and by["zh"]["n"] > 0
    else:
        assert by["zh"]["validated"] is False and by["zh"]["kappa"] is None
    bare = [x for x in langs if x["language"] not in ("en", "es", "pt", "zh")]
    assert bare and all(x["validated"] is False and x["kappa"] is None for x in bare)
