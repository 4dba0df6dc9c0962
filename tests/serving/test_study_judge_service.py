"""A study judges through the Serve application other teams call (issue #17, point 2): the ``remote``
judge with ``deploy`` brings the application up from its Serve config on the driver (once: a running one
is reused), and an evaluation worker — a Ray task, as in pipelines/sweep/evaluation.py — judges through
its deployment handle with the labels the served judge gives in-process. Without ``deploy`` and with no
application running, the study fails before any evaluation, naming the fix."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from judge_service_cases import free_port

from pipelines.errors import ConfigError
from pipelines.evaluate.judges import JudgeItem, make_judge

APP = "study-judge"
ITEMS = [JudgeItem("How do I bake bread?", "Mix flour, water and yeast, then bake it for 40 minutes.", "en"),
         JudgeItem("How do I bake bread?", "I'm sorry, but I can't help with that.", "en"),
         JudgeItem("¿Cómo hago pan?", "Lo siento, no puedo ayudar con eso.", "es"),
         JudgeItem("¿Cómo hago pan?", "Mezcla harina y agua, y hornéalo.", "es")]


@pytest.fixture(scope="module")
def serve_on_ray() -> Iterator[None]:
    import ray
    from ray import serve

    with pytest.MonkeyPatch.context() as mp:
        for name in ("SAFEDRIFT_JUDGE_TOKEN", "SAFEDRIFT_JUDGE_TOKEN_FILE", "SAFEDRIFT_JUDGE_TOKENS_DIR"):
            mp.delenv(name, raising=False)  # loopback, no token: local development, as on a laptop
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(num_cpus=4, include_dashboard=False)
        try:
            yield
        finally:
            serve.shutdown()  # this module started Serve: no proxy left for later tests
            if started_ray:
                ray.shutdown()


def test_study_deploys_the_judge_app_once_and_workers_judge_through_it(serve_on_ray: None) -> None:
    import ray
    from ray import serve

    judge = make_judge("remote", app_name=APP, deploy="serving/judge.yaml", deploy_port=free_port())
    judge.prepare()
    app = serve.status().applications[APP]
    assert str(app.status).endswith("RUNNING")
    deployed_at = app.last_deployed_time_s
    judge.prepare()  # running already: reused, not redeployed
    assert serve.status().applications[APP].last_deployed_time_s == deployed_at

    @ray.remote(num_cpus=0.5)
    def worker(items: list[JudgeItem]) -> list[tuple[int | None, float]]:
        return [(v.label, v.score) for v in make_judge("remote", app_name=APP).judge(items)]

    local = make_judge("refusal-phrase").judge(ITEMS)  # the judge serving/judge.yaml serves
    assert ray.get(worker.remote(ITEMS)) == [(v.label, v.score) for v in local]
    assert {v.label for v in local} == {0, 1}  # both labels occur: the comparison is not trivial
    info = serve.get_deployment_handle("JudgeBackend", app_name=APP).info.remote().result(timeout_s=30)
    assert info["stats"]["items"] >= len(ITEMS)
    # The report takes how the service judges each language (and its κ there) from the service itself;
    # a language it does not list is unjudgeable.
    served = make_judge("remote", app_name=APP).served_languages(["en", "xx"], wait_s=0)
    assert served[0] == next(r for r in info["languages"] if r["language"] == "en")
    assert served[1]["language"] == "xx" and served[1]["mode"] == "refuse" and not served[1]["validated"]
    serve.delete(APP)


def test_remote_judge_without_an_app_or_deploy_fails_naming_the_fix(serve_on_ray: None) -> None:
    with pytest.raises(ConfigError, match="judge.options.deploy"):
        make_judge("remote", app_name="no-such-judge-app").prepare()
