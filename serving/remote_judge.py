"""``RemoteJudge``: the ``Judge`` interface over the judge service, registered as judge ``"remote"``.

Two transports: HTTP through ``JudgeClient`` (from outside the cluster: give ``url``), or a Serve
deployment handle on the batched judge deployment (inside the Ray cluster: give no ``url``; no HTTP,
no auth hop). Either way the verdicts are those of the judge the service is configured with.

A study judges with the same application other teams call: with ``deploy`` (a Serve config such as
serving/judge.yaml or serving/judge-paper.yaml) the study's driver deploys it on the cluster before the
evaluation workers start, unless an application of that name is running already (a RayService's);
without ``deploy`` it must be running, and the study fails before any evaluation if it is not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from pipelines.errors import ConfigError
from pipelines.evaluate.judges.base import Judge, JudgeItem, Verdict
from pipelines.layout import repo_path
from pipelines.secrets import read_secret
from serving.auth import load_token
from serving.client import JudgeAPIError, JudgeClient
from serving.config import DEFAULT_APP_NAME
from serving.config import load_config as load_service_config
from serving.errors import DeadlineExceeded
from serving.schemas import LABEL_VALUES, LEGACY_LABELS

log = logging.getLogger(__name__)


def _verdict(result: dict[str, Any]) -> Verdict:
    label = result["label"]
    return Verdict(LABEL_VALUES[label], float(result["score"]), LEGACY_LABELS.get(label, label))


class RemoteJudge(Judge):
    name = "remote"
    version = "1"
    version_is_served = True  # the labels carry the served judge's version
    # Any language: the service applies its own per-language policy, so the pipeline must not translate first.
    native_languages = None
    # The service applies the answer-form check itself and says non_answer.
    detects_non_answers = True

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        app_name: str = DEFAULT_APP_NAME,
        deployment: str = "JudgeBackend",
        handle: Any = None,
        timeout: float = 60.0,
        retries: int = 4,
        batch_size: int = 64,
        max_concurrency: int = 4,
        token_file: str | None = None,
        token_env: str | None = None,
        deploy: str | None = None,
        deploy_host: str = "127.0.0.1",
        deploy_port: int = 8000,
        wait_s: float = 3600.0,
        validity_wait_s: float = 900.0,
    ) -> None:
        self._deploy, self._deploy_host, self._deploy_port = deploy, deploy_host, deploy_port
        # The handle transport waits for a whole judge() call, not per result: the replica judges one merged
        # call at a time, so a chunk's wait is the queue ahead of it (other cells' and other models'), which
        # `timeout` (one HTTP request's) does not bound. The service drops what is still queued at wait_s.
        self._wait_s, self._validity_wait_s = wait_s, validity_wait_s
        self._client: JudgeClient | None = None
        self._handle = handle
        self._app_name, self._deployment = app_name, deployment
        self._timeout, self._batch_size = timeout, batch_size
        if url:
            # token_file / token_env (judge.options) keep the token out of the study config; read here,
            # where the judge runs. Else the server's env vars: a pipeline next to the service needs no config.
            token = read_secret("judge.options.token", token, token_file, token_env)
            self._client = JudgeClient(
                url, token=token if token is not None else load_token(), timeout=timeout, retries=retries,
                batch_size=batch_size, max_concurrency=max_concurrency,
            )
        self._served: dict[str, str] | None = None

    def prepare(self) -> None:
        """On the driver: the application is running, or is deployed now from ``deploy``."""
        if self._client is not None or self._handle is not None:
            return  # HTTP: the service is someone else's; a handle given: it exists
        from ray import serve

        app = serve.status().applications.get(self._app_name)
        if app is not None and str(app.status).endswith("RUNNING"):
            self._check_running_judge()
            self._await_validity()
            return
        if not self._deploy:
            raise ConfigError(
                f"judge 'remote' judges through the Serve application '{self._app_name}', which is not running "
                "on this cluster: deploy it first (`safedrift serve`, or the RayService of infra/), or set "
                "judge.options.deploy to its Serve config (e.g. serving/judge.yaml) for the study to deploy it")
        from serving.app import serve_judge

        serve_judge(repo_path(self._deploy), host=self._deploy_host, port=self._deploy_port,
                      app_name=self._app_name)
        self._await_validity()

    def _check_running_judge(self) -> None:
        """A running application of that name (a RayService's, which serves refusal-phrase out of the box)
        must judge with the judge that `deploy` names, or the study would be labelled by another judge than
        its config says."""
        if not self._deploy:
            return
        want = load_service_config(repo_path(self._deploy)).judge.name
        got = self._backend().info.remote().result(timeout_s=self._timeout)["judge"]
        if got != want:
            raise ConfigError(
                f"the Serve application '{self._app_name}' running on this cluster judges with '{got}', but "
                f"judge.options.deploy ({self._deploy}) names '{want}': set judge.options.app_name to a name "
                "of its own for the study to deploy its judge, or serve that config as this application")

    def _await_validity(self) -> None:
        """On the driver, before any evaluation worker holds a GPU: the replica's validity measurement
        (minutes cold) is waited for here once, so that no worker waits for it (served_languages)."""
        if self._info_after_validity(self._validity_wait_s).get("validity") == "computing":
            log.warning("the judge service's validity is still being measured after %g s: the cells "
                        "report its languages unvalidated (raise judge.options.validity_wait_s)",
                        self._validity_wait_s)

    def _backend(self) -> Any:
        if self._handle is None:
            from ray import serve  # only the in-cluster transport needs Serve

            self._handle = serve.get_deployment_handle(self._deployment, app_name=self._app_name)
        return self._handle

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        results = self._client.judge(items) if self._client is not None else self._judge_by_handle(items)
        if len(results) != len(items):
            raise JudgeAPIError(f"remote judge returned {len(results)} results for {len(items)} items")
        if results and self._served is None:
            self._served = {"judge": results[0]["judge"], "judge_version": results[0]["judge_version"]}
        return [_verdict(r) for r in results]

    def _judge_by_handle(self, items: Sequence[JudgeItem]) -> list[dict[str, Any]]:
        payload = [{"prompt": i.prompt, "response": i.response, "language": i.language} for i in items]
        chunks = [payload[i : i + self._batch_size] for i in range(0, len(payload), self._batch_size)]
        # All chunks in flight at once, so the deployment's dynamic batching can merge them; each carries
        # the call's deadline, so the service drops what nobody waits for any more.
        deadline = time.time() + self._wait_s
        handle = self._backend()
        responses = [handle.judge.remote(c, deadline) for c in chunks]
        try:
            return [r for resp in responses for r in resp.result(timeout_s=max(0.0, deadline - time.time()) + 5.0)]
        except (TimeoutError, DeadlineExceeded) as exc:  # DeadlineExceeded is a TimeoutError; named for the reader
            for resp in responses:
                resp.cancel()
            raise JudgeAPIError(
                f"the judge service '{self._app_name}' did not judge {len(items)} item(s) within "
                f"judge.options.wait_s={self._wait_s:g} s: raise judge.options.wait_s, or give the judge more "
                "replicas (backend.num_replicas in its Serve config)") from exc

    def _info_after_validity(self, wait_s: float) -> dict[str, Any]:
        """The service's info, once its replica has measured its validity (or after wait_s)."""
        deadline = time.monotonic() + wait_s
        while True:
            info = self._client.info() if self._client else self._backend().info.remote().result(
                timeout_s=self._timeout)
            if info.get("validity") != "computing" or time.monotonic() > deadline:
                return info
            time.sleep(min(5.0, max(0.1, wait_s / 10)))

    def served_languages(self, languages: Sequence[str], wait_s: float = 60.0) -> list[dict[str, Any]]:
        """The service's own per-language policy and κ (GET /v1/info), for the eval languages: the service
        back-translates or reads natively as its config says, so the pipeline reports what it did. Waits
        (up to wait_s: the driver's prepare() waited already, before any worker held a GPU) while the
        replica is still measuring its validity; a language the service does not list is reported
        unjudgeable here."""
        info = self._info_after_validity(wait_s)
        listed = {r["language"]: r for r in info.get("languages") or []}
        return [listed.get(lang) or {"language": lang, "mode": "refuse", "route": None, "validated": False,
                                     "kappa": None, "accuracy": None, "n": 0, "labels": None}
                for lang in languages]

    def describe(self) -> dict[str, str]:
        """The judge that actually labels (the service's), not this adapter."""
        if self._served is None:
            info = self._client.info() if self._client else self._backend().info.remote().result(
                timeout_s=self._timeout)
            self._served = {"judge": info["judge"], "judge_version": info["judge_version"]}
        return {**self._served, "via": "remote"}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
