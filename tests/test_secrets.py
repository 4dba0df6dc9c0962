"""Secrets in the config (issue #19, point 1): one public view for every sink, one hash view for every hash.

Each test puts a secret where a user would (a remote judge's token, a translator's or backend's API key,
a password in MLflow's tracking URI) and checks the sink or hash that used to carry it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cells import cell_hash, study_cells, study_hashes
from pipelines.config import StudyConfig, parse_config
from pipelines.errors import ConfigError
from pipelines.layout import Workdir
from pipelines.presets import load_config
from pipelines.report.provenance import study_context
from pipelines.secrets import MASK, hash_view, public_hash, public_view, read_secret, redact_uri, secret_kind
from pipelines.sweep.cell import flat_params

TOKEN = "tok-" + "5f0c2a9e7b41d3e8a6c0f9b2d4e1a7c3"  # an invented secret, searched for in every output
PASSWORD = "pw-" + "9d1e7c3b5a0f2e8d"
REMOTE = ["judge.name=remote", "judge.options.url=http://127.0.0.1:9"]


def remote_cfg(token: str = TOKEN, *extra: str) -> StudyConfig:
    return load_config("smoke", [*REMOTE, f"judge.options.token={token}", *extra])


def test_secret_keys_anywhere_in_the_tree_are_masked_and_numbers_are_not() -> None:
    data = {"judge": {"options": {"token": TOKEN, "token_file": "/run/secrets/judge", "url": "http://j:8000"}},
            "translate": {"options": {"deepl": {"api_key": TOKEN, "batch_size": 8}}},
            "generate": {"options": {"headers": {"Authorization": f"Bearer {TOKEN}"}}, "max_new_tokens": 40},
            "mlflow": {"tracking_uri": f"http://alice:{PASSWORD}@mlflow:5000"},
            "evaluate": {"ppl_tokens": 2048}, "misc": {"clientSecret": TOKEN, "AccessKey": TOKEN, "empty_token": ""}}
    shown = public_view(data)
    assert TOKEN not in repr(shown) and PASSWORD not in repr(shown)
    assert shown["judge"]["options"] == {"token": MASK, "token_file": "/run/secrets/judge", "url": "http://j:8000"}
    assert shown["translate"]["options"]["deepl"] == {"api_key": MASK, "batch_size": 8}
    assert shown["generate"]["options"]["headers"] == {"Authorization": MASK}
    assert shown["mlflow"]["tracking_uri"] == "http://mlflow:5000"
    # Counts named like tokens are not secrets; an empty value hides nothing.
    assert shown["generate"]["max_new_tokens"] == 40 and shown["evaluate"]["ppl_tokens"] == 2048
    assert shown["misc"] == {"clientSecret": MASK, "AccessKey": MASK, "empty_token": ""}
    # The hash view drops secrets and the references to them: nothing to re-run after a rotation.
    hashed = hash_view(data)
    assert hashed["judge"]["options"] == {"url": "http://j:8000"}
    assert hashed["translate"]["options"]["deepl"] == {"batch_size": 8}
    assert secret_kind("token_env") == "reference" and secret_kind("author") is None


def test_uri_credentials_go_in_every_view() -> None:
    assert redact_uri(f"postgresql://mlflow:{PASSWORD}@db:5432/mlflow?sslmode=require&password={PASSWORD}") == \
        "postgresql://db:5432/mlflow?sslmode=require&password=***"
    assert redact_uri(f"http://u:{PASSWORD}@h:5000/x?token={TOKEN}", drop=True) == "http://h:5000/x"
    plain = "sqlite:////tmp/x/mlflow.db"
    assert redact_uri(plain) is plain  # unchanged byte for byte: it names folders through hashes
    assert public_view({"note": f"https://{TOKEN}@example.org/"}) == {"note": "https://example.org/"}


def test_rotating_a_token_changes_no_hash_and_the_url_does() -> None:
    a, b = remote_cfg(TOKEN), remote_cfg(TOKEN[::-1])
    assert a.digest() == b.digest() and study_hashes(a) == study_hashes(b)
    assert [cell_hash(a, c, "d") for c in study_cells(a)] == [cell_hash(b, c, "d") for c in study_cells(b)]
    # A token moved into a file or the environment is still the same study.
    c = load_config("smoke", [*REMOTE, "judge.options.token_file=/run/secrets/judge"])
    assert c.digest() == a.digest() and study_hashes(c) == study_hashes(a)
    moved = load_config("smoke", ["judge.name=remote", "judge.options.url=http://127.0.0.1:10",
                                  f"judge.options.token={TOKEN}"])
    assert study_hashes(moved)[1] != study_hashes(a)[1]  # another service: other verdicts, other cells
    # Nothing secret: the views are the identity, so no existing hash moved with this change.
    smoke = load_config("smoke")
    assert hash_view(smoke) == smoke.model_dump(mode="json") == public_view(smoke)
    assert smoke.digest() == public_hash(smoke.model_dump(mode="json"))


def test_mlflow_params_and_provenance_carry_no_secret() -> None:
    cfg = remote_cfg(TOKEN, f"mlflow.tracking_uri=http://alice:{PASSWORD}@mlflow.internal:5000")
    params = flat_params(cfg, study_cells(cfg)[0])
    assert params["judge.options.token"] == MASK and params["judge.options.url"] == "http://127.0.0.1:9"
    assert params["mlflow.tracking_uri"] == "http://mlflow.internal:5000"
    ctx = study_context(cfg, "s", "d", {}, "run", cfg.mlflow.tracking_uri)
    text = repr(ctx)
    assert TOKEN not in text and PASSWORD not in text
    assert ctx["config"]["judge"]["options"]["token"] == MASK and ctx["config_hash"] == cfg.digest()
    assert ctx["mlflow"]["tracking_uri"] == "http://mlflow.internal:5000"


def test_sweep_folder_is_not_a_hash_of_the_password(tmp_path: Path) -> None:
    wd = Workdir.open(tmp_path)
    one = wd.sweep("s", f"http://alice:{PASSWORD}@mlflow:5000")
    assert one == wd.sweep("s", "http://alice:other-password@mlflow:5000") == wd.sweep("s", "http://mlflow:5000")
    assert one != wd.sweep("s", "http://mlflow-2:5000")  # a new store still gets its own sweep record


def test_config_show_masks_the_token_and_the_uri_password() -> None:
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "config", "show", "-c", "smoke", *REMOTE,
                           f"judge.options.token={TOKEN}", f"mlflow.tracking_uri=http://a:{PASSWORD}@m:5000"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    assert TOKEN not in out and PASSWORD not in out
    assert "token: '***'" in proc.stdout and "tracking_uri: http://m:5000" in proc.stdout
    # The hash shown is that of the config without its secrets: another token and password, same hash.
    other = remote_cfg(TOKEN[::-1], "mlflow.tracking_uri=http://b:another-password@m:5000")
    assert f"# config hash: {other.digest()}" in proc.stdout


def test_read_secret_from_a_file_or_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    assert read_secret("judge.options.token", file=str(f)) == TOKEN
    monkeypatch.setenv("SD_TEST_JUDGE_TOKEN", TOKEN)
    assert read_secret("judge.options.token", env="SD_TEST_JUDGE_TOKEN") == TOKEN
    assert read_secret("judge.options.token") is None
    with pytest.raises(ConfigError, match="token_file names .*missing.*cannot be read"):
        read_secret("judge.options.token", file=str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="token_env names the environment variable SD_TEST_UNSET") as exc:
        read_secret("judge.options.token", env="SD_TEST_UNSET")
    with pytest.raises(ConfigError, match="give one of judge.options.token, judge.options.token_file") as both:
        read_secret("judge.options.token", value=TOKEN, file=str(f))
    assert TOKEN not in str(exc.value) + str(both.value)


def test_remote_judge_options_accept_token_file_and_env() -> None:
    # Bound against RemoteJudge's signature when the config loads, like every judge option.
    cfg = load_config("smoke", [*REMOTE, "judge.options.token_env=SD_JUDGE_TOKEN"])
    assert cfg.judge.options["token_env"] == "SD_JUDGE_TOKEN"
    with pytest.raises(ConfigError, match="token_fil"):
        load_config("smoke", [*REMOTE, "judge.options.token_fil=/x"])
    assert parse_config("smoke").judge.options == {}


def test_a_schema_error_does_not_echo_the_secret() -> None:
    with pytest.raises(ConfigError, match=r"judge.optons: Extra inputs are not permitted") as exc:
        parse_config("smoke", [f"judge.optons={{token: {TOKEN}}}"])
    assert TOKEN not in str(exc.value) and MASK in str(exc.value)


def test_a_study_leaves_no_tracking_uri_behind(tmp_path, monkeypatch) -> None:
    """MLflow exports a tracking URI it is given to the environment; a second study in the same process
    must not inherit the first one's store."""
    import os

    from cluster.tracking import setup_mlflow, tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, _ = setup_mlflow(tmp_path / "a" / "mlflow.db", tmp_path / "a" / "art", "e")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking_uri(tmp_path / "b" / "mlflow.db") == f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}" != uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # a user's choice is kept
    setup_mlflow(tmp_path / "c" / "mlflow.db", tmp_path / "c" / "art", "e", configured_uri=uri)
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:9"


# -- issue 30: secrets in free text (a command line) and in signed URLs' query parameters ---------------
@pytest.mark.parametrize("uri", [
    f"https://bucket.s3.amazonaws.com/o?X-Amz-Signature={TOKEN}&X-Amz-Date=20260101",
    f"https://storage.googleapis.com/b/o?X-Goog-Signature={TOKEN}",
    f"https://acct.blob.core.windows.net/c/o?sv=2024-01-01&sig={TOKEN}",
    f"https://api.example/v1/rows?key={TOKEN}&q=1",
    f"https://api.example/v1/rows?access_token={TOKEN}",
])
def test_signed_url_query_secrets_are_masked_and_dropped_from_hashes(uri: str) -> None:
    shown = redact_uri(uri)
    assert TOKEN not in shown and "=***" in shown
    assert TOKEN not in redact_uri(uri, drop=True)
    assert TOKEN not in repr(public_view({"data": {"url": uri}}))
    assert "X-Amz-Date=20260101" in redact_uri(PLANTED_S3) and "q=1" in redact_uri(f"https://a/?key={TOKEN}&q=1")


PLANTED_S3 = f"https://bucket.s3.amazonaws.com/o?X-Amz-Signature={TOKEN}&X-Amz-Date=20260101"


@pytest.mark.parametrize("text", [
    f"judge.options={{url: http://judge:8000, token: {TOKEN}}}",  # the README's own form
    f'judge.options={{"url": "http://judge:8000", "token": "{TOKEN}"}}',
    f"judge.options={{token: '{TOKEN}'}}",
    f"judge.options.token={TOKEN}",
    f"mlflow.tracking_uri=postgresql://mlflow:{TOKEN}@db:5432/mlflow",
    f"data.url=https://api.example/v1?key={TOKEN}",
    f"generate.options.api_key={TOKEN}",
])
def test_redact_text_masks_every_form_a_command_line_carries(text: str) -> None:
    from pipelines.secrets import redact_argv, redact_text

    assert TOKEN not in redact_text(text)
    assert TOKEN not in redact_argv(["safedrift", "run", "-c", "smoke", text])


def test_redact_text_keeps_what_is_no_secret() -> None:
    from pipelines.secrets import redact_argv, redact_text

    text = "judge.name=remote generate.max_new_tokens=40 judge.options={url: http://judge:8000, token_file: /run/t}"
    assert redact_text(text) == text
    assert redact_argv(["safedrift", "serve", "--token", TOKEN, "--port", "8000"]) == \
        "safedrift serve --token *** --port 8000"
