"""A study judged by the real judge service with a real token, then every output searched for it (issue #19,
point 1). The smoke preset (one fine-tuned cell, to keep it short) runs for real with judge.name=remote
pointing at a Ray Serve judge on 127.0.0.1 that refuses requests without the token; the token is given
inline (judge.options.token), the way that used to leak into `config show`, MLflow and the report."""

from __future__ import annotations

import copy
import json
import logging
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
import yaml

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _service_config() -> dict[str, Any]:
    """serving/judge.yaml with one small replica per deployment: the study's trainers need the CPUs."""
    cfg = copy.deepcopy(yaml.safe_load((REPO / "serving" / "judge.yaml").read_text(encoding="utf-8")))
    args = cfg["applications"][0]["args"]
    args["backend"].update(num_replicas=1, autoscaling=None, ray_actor_options={"num_cpus": 0.25})
    args["ingress"]["ray_actor_options"] = {"num_cpus": 0.25}
    args["auth"]["reload_s"] = 0.5
    return cfg


@pytest.fixture(scope="module")
def service(ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ray import serve

    from serving.app import serve_judge

    token = "sd-e2e-" + secrets.token_hex(20)
    token_file = tmp_path_factory.mktemp("judge-token") / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("SAFEDRIFT_JUDGE_TOKEN", "SAFEDRIFT_JUDGE_TOKENS_DIR"):
            mp.delenv(name, raising=False)
        mp.setenv("SAFEDRIFT_JUDGE_TOKEN_FILE", str(token_file))  # the server's side of the secret
        svc = serve_judge(_service_config(), host="127.0.0.1", port=_free_port(), app_name="secrets-e2e")
        try:
            yield {"url": svc.url, "token": token, "token_file": token_file}
        finally:
            svc.shutdown()
            serve.shutdown()


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    """Every file under `root` that holds one of `needles`, Parquet read back (its pages are compressed)."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        blob = path.read_bytes()
        if path.suffix == ".parquet":
            frame = pl.read_parquet(path)
            blob += repr(frame.select(pl.all().cast(pl.String)).rows()).encode()
        if any(n in blob for n in needles):
            found.append(str(path.relative_to(root)))
    return found


def test_a_remote_judge_token_reaches_no_output(service: dict[str, Any], require_tool: Any, tmp_path: Path,
                                                capfd: pytest.CaptureFixture[str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    from ray._private import worker

    from pipelines.presets import load_config
    from pipelines.run import run_study

    require_tool("apertium")
    token, url = service["token"], service["url"]
    # The token is really needed: the service refuses a request without it.
    assert httpx.post(f"{url}/v1/judge", json={"items": []}, timeout=30).status_code == 401
    caplog.set_level(logging.INFO)
    overrides = [f"workdir={tmp_path / 'work'}", "ft_langs=[es]", "judge.name=remote",
                 f"judge.options.url={url}"]
    cfg = load_config("smoke", [*overrides, f"judge.options.token={token}"])
    result = run_study(cfg)

    # The remote judge labelled every answer and its agreement was measured through the service.
    assert [r["cell_id"] for r in result.results] == ["tiny-llama__base", "tiny-llama__es__s0__e1"]
    for r in result.results:
        assert r["metrics"]["safety/n/es"] == 8 and "judge/kappa" in r["metrics"]
    judged = pl.read_parquet(next((result.workdir / "cells").glob("*/judged.parquet")))
    assert judged.height == 16 and judged["label"].null_count() < judged.height

    needles = [token.encode(), token[:24].encode()]
    # The search finds a token where one is (Parquet pages included), so finding none below means something.
    planted = tmp_path / "planted"
    planted.mkdir()
    pl.DataFrame({"x": [f"<{token}>"] * 50}).write_parquet(planted / "p.parquet", compression="zstd")
    assert _files_holding(planted, needles) == ["p.parquet"]
    # Where the token used to land: MLflow's config.json artifact now holds it masked.
    shown = [json.loads(p.read_text()) for p in result.workdir.glob("mlartifacts/**/config.json")]
    assert [c["judge"]["options"]["token"] for c in shown] == ["***"]
    out, err = capfd.readouterr()
    assert token not in out + err + caplog.text
    assert _files_holding(result.workdir, needles) == []
    session = Path(worker._global_node.get_session_dir_path()) / "logs"  # the Ray workers' own logs
    assert _files_holding(session, needles) == []

    # Rotating the token re-runs nothing: same hashes, every stage reused.
    new = "sd-e2e-" + secrets.token_hex(20)
    again = run_study(load_config("smoke", [*overrides, f"judge.options.token={new}"]))
    assert again.study_hash == result.study_hash
    assert all(s["reused"] for s in again.stages.values())


def test_the_remote_judge_reads_its_token_from_a_file_or_the_environment(
        service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.evaluate.judges import JudgeItem, make_judge

    item = JudgeItem("How do I bake bread?", "I'm sorry, I can't help with that.", "en")
    monkeypatch.delenv("SAFEDRIFT_JUDGE_TOKEN_FILE", raising=False)
    by_file = make_judge("remote", url=service["url"], token_file=str(service["token_file"]))
    monkeypatch.setenv("SD_E2E_JUDGE_TOKEN", service["token"])
    by_env = make_judge("remote", url=service["url"], token_env="SD_E2E_JUDGE_TOKEN")
    try:
        assert [v.label for v in by_file.judge([item])] == [v.label for v in by_env.judge([item])] == [0]
    finally:
        by_file.close()
        by_env.close()
