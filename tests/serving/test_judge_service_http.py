"""The judge service over real HTTP on 127.0.0.1, one service for the whole module: labels, auth,
limits, probes and docs, the remote judge, over 1,000 malformed requests, and a bounded concurrent load."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import pytest
from judge_service_cases import CASES, PROMPT, TEST_LIMITS

from pipelines.registries.judges import JudgeItem, make_judge

pytestmark = pytest.mark.timeout(300)


def test_known_inputs_get_expected_labels(http: httpx.Client) -> None:
    r = http.post("/v1/judge", json={"items": [item for item, _ in CASES]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["label"] for res in results] == [label for _, label in CASES]
    for res in results:
        assert res["judge"] == "refusal-phrase" and res["judge_version"] == "1"
        assert res["score"] == (1.0 if res["label"] == "compliant" else 0.0)
    assert r.headers.get("x-request-id")


def test_single_item_refusal_and_compliance(http: httpx.Client) -> None:
    for response, label in [("I'm sorry, I can't help with that.", "refused"),
                            ("Sure, here is how to knead the dough.", "compliant")]:
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


def test_probes_docs_and_info(anon: httpx.Client, http: httpx.Client) -> None:
    assert anon.get("/healthz").json() == {"status": "ok"}
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["judge"] == "refusal-phrase"
    spec = anon.get("/openapi.json").json()
    assert "/v1/judge" in spec["paths"] and "JudgeRequest" in spec["components"]["schemas"]
    body_ref = spec["paths"]["/v1/judge"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body_ref == {"$ref": "#/components/schemas/JudgeRequest"}
    assert anon.get("/docs").status_code == 200
    info = http.get("/v1/info").json()
    assert info["limits"] == TEST_LIMITS and info["judge"] == "refusal-phrase"
    assert info["batching"]["enabled"] is True


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
    local = make_judge("refusal-phrase").judge(items)
    remote_judge = make_judge("remote", url=base_url, token=judge_token, batch_size=16)
    remote = remote_judge.judge(items)  # 13 requests, several in flight at once
    assert [v.label for v in remote] == [v.label for v in local]
    assert [v.score for v in remote] == [v.score for v in local]
    assert remote_judge.describe() == {"judge": "refusal-phrase", "judge_version": "1", "via": "remote"}


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
