"""Configuration of the Responses source, discovery and the webhook receiver: a one-line error naming the
setting, never a secret, for each mistake; and what each combination turns on."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.sources import responses
from tests.test_config import error_of, write

KEY = "sk-test-DISTINCTIVE-0123456789abcdef"



@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"OPENAI_API_KEY": KEY, "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}


SECRET = "whsec_" + base64.b64encode(b"config-test-secret-0123456789abc").decode()


def test_responses_without_a_key_receives_webhooks_only(env: dict[str, str], tmp_path: Path) -> None:
    no_key = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    secrets = write(tmp_path / "s", f"# rotation: new first\n{SECRET}\nplain-old-secret\n")
    c = load_config(["--source", "responses", "--webhook-secret-file", str(secrets)], no_key)
    assert c.webhook_secrets == (SECRET, "plain-old-secret") and not c.polls_responses and c.receives
    assert SECRET not in repr(c) and SECRET in c.secrets()
    with_key = load_config(["--source", "responses", "--discover-responses", "--agent", "a", "--agent", "b"], env)
    assert with_key.polls_responses and with_key.options(responses.SPEC).agents == ("a", "b") and with_key.calls_api


@pytest.mark.parametrize(("args", "expected"), [
    (["--discover-responses"], "--discover-responses needs --source responses"),
    (["--source", "responses", "--agent", "x"], "--agent needs --discover-responses"),
    (["--source", "nope"], "each source must be one of threads, push, sessions, responses"),
])
def test_mistakes_are_one_line_errors(env: dict[str, str], args: list[str], expected: str) -> None:
    assert expected in error_of(["--thread", "t", *args], env)


def test_discovery_needs_a_way_to_authenticate(env: dict[str, str]) -> None:
    no_key = {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}
    assert "needs an API key" in error_of(["--source", "responses", "--discover-responses"], no_key)


def test_bad_secret_files_name_the_file_never_the_secret(env: dict[str, str], tmp_path: Path) -> None:
    bad = "whsec_" + "!!not-base64!!"
    message = error_of(["--webhook-secret-file", str(write(tmp_path / "s", bad + "\n")), "--thread", "t"], env)
    assert "secret 1: not valid base64 after whsec_" in message and "not-base64" not in message
    assert "holds no secret" in error_of(["--webhook-secret-file", str(write(tmp_path / "e", "# none\n")),
                                          "--thread", "t"], env)
    assert "cannot read" in error_of(["--webhook-secret-file", str(tmp_path / "missing"), "--thread", "t"], env)


def test_the_command_exits_2(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--source", "responses", "--agent", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--agent needs --discover-responses" in err
