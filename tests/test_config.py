"""Config: flags > env > YAML > defaults, validation messages, and the API key never leaking."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from exporter import __version__
from exporter.addresses import format_listen
from exporter.config import (
    FLAGS,
    NOT_UTF8,
    YAML_KEYS,
    Config,
    ConfigError,
    build_parser,
    default_state_file,
    load_config,
    parse_listen,
    parse_threads,
    read_threads_file,
)
from exporter.sources.assistants import ThreadsOptions
from exporter.watchlist import ThreadsFileWatcher
from tests.helpers import REPO_ROOT

KEY = "sk-test-DISTINCTIVE-0123456789abcdef"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A minimal environment: a key, and state under tmp_path (never the real home)."""
    return {"OPENAI_API_KEY": KEY, "XDG_STATE_HOME": str(tmp_path / "state"), "HOME": str(tmp_path / "home")}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(argv: list[str], env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    message = str(info.value)
    assert "\n" not in message
    assert KEY not in message
    return message


# ------------------------------------------------------------------------------------------ parsing


def test_defaults(env: dict[str, str], tmp_path: Path) -> None:
    c = load_config(["--thread", "thread_a"], env)
    assert c.api_base == "https://api.openai.com/v1"
    assert c.api_key == KEY
    assert c.api_key_file is None
    assert c.auth_header == "bearer"
    assert c.api_version is None and c.organization is None and c.project is None
    assert c.threads == ("thread_a",)
    assert c.threads_file is None
    assert c.poll_interval == 5.0
    assert c.idle_poll_interval == 60.0
    assert c.max_concurrency == 8
    assert c.max_requests_per_second == 10.0
    assert (c.listen_host, c.listen_port, c.listen) == ("0.0.0.0", 9788, "0.0.0.0:9788")
    assert c.state_file == tmp_path / "state" / "assistants-exporter" / "state.db"
    assert c.labels == ("assistant_id",)
    assert c.terminal_retention == 3600.0
    assert c.demo is False and c.demo_scenario == "steady" and c.demo_speed == 5.0
    assert c.log_level == "info" and c.log_format == "text"
    assert c.config_file is None


def test_every_flag_parses(env: dict[str, str], tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", f"  {KEY}-file\n")
    threads_file = write(tmp_path / "threads.txt", "thread_x\n")
    config_file = write(tmp_path / "c.yaml", "")
    argv = [
        "--config", str(config_file),
        "--api-base", "http://localhost:8080/v1/",
        "--api-key-file", str(key_file),
        "--auth-header", "api-key",
        "--api-version", "2024-05-01-preview",
        "--organization", "org-1",
        "--project", "proj-1",
        "--thread", "t1", "--thread", "t2",
        "--threads-file", str(threads_file),
        "--poll-interval", "0.5",
        "--idle-poll-interval", "30",
        "--max-concurrency", "16",
        "--max-requests-per-second", "2.5",
        "--listen", "[::1]:0",
        "--state-file", str(tmp_path / "new" / "dir" / "s.db"),
        "--labels", "assistant_id,model",
        "--terminal-retention", "0",
        "--demo",
        "--demo-scenario", "failures",
        "--demo-speed", "10",
        "--log-level", "DEBUG",
        "--log-format", "json",
    ]
    c = load_config(argv, env)
    assert c == Config(
        api_base="http://localhost:8080/v1",
        api_key=f"{KEY}-file",
        api_key_file=key_file,
        auth_header="api-key",
        api_version="2024-05-01-preview",
        organization="org-1",
        project="proj-1",
        threads=("t1", "t2"),
        threads_file=threads_file,
        poll_interval=0.5,
        idle_poll_interval=30.0,
        max_concurrency=16,
        max_requests_per_second=2.5,
        listen_addresses=("[::1]:0",),
        state_file=tmp_path / "new" / "dir" / "s.db",
        labels=("assistant_id", "model"),
        terminal_retention=0.0,
        demo=True,
        demo_scenario="failures",
        demo_speed=10.0,
        log_level="debug",
        log_format="json",
        config_file=config_file,
        source_options={"threads": ThreadsOptions()},
    )
    assert (tmp_path / "new" / "dir").is_dir()  # parent of the state file created at startup
    assert c.listen == "[::1]:0"


def test_parser_is_built_from_flags() -> None:
    options = {s for a in build_parser()._actions for s in a.option_strings}
    assert {f.name for f in FLAGS} <= options
    aliases = {alias for f in FLAGS for alias in f.aliases}
    assert aliases == {"--listen", "--web-config-file"}  # the names before exporter-toolkit's
    assert options - {f.name for f in FLAGS} == {"-h", "--help", "--version", *aliases}
    envs = [f.env for f in FLAGS]
    assert "ASSISTANTS_EXPORTER_POLL_INTERVAL" in envs and len(set(envs)) == len(envs)
    assert {f.name: f.yaml_key for f in FLAGS}["--thread"] == "threads"


def test_exporter_toolkit_names_and_the_earlier_ones_set_the_same_thing(env: dict[str, str], tmp_path: Path) -> None:
    both = load_config(["--thread", "t", "--listen", "127.0.0.1:1", "--web.listen-address", "[::1]:2"], env)
    assert both.listen_addresses == ("127.0.0.1:1", "[::1]:2") and both.listen == "127.0.0.1:1"
    old_env = load_config(["--thread", "t"], {**env, "ASSISTANTS_EXPORTER_LISTEN": "127.0.0.1:3"})
    assert old_env.listen_addresses == ("127.0.0.1:3",) and not old_env.warnings
    new_env = load_config(["--thread", "t"], {**env, "ASSISTANTS_EXPORTER_LISTEN": "127.0.0.1:3",
                                               "ASSISTANTS_EXPORTER_WEB_LISTEN_ADDRESS": "127.0.0.1:4,127.0.0.1:5"})
    assert new_env.listen_addresses == ("127.0.0.1:4", "127.0.0.1:5")
    old_yaml = write(tmp_path / "old.yaml", "threads: [t]\nlisten: 127.0.0.1:6\n")
    assert load_config(["--config", str(old_yaml)], env).listen_addresses == ("127.0.0.1:6",)
    twice = write(tmp_path / "twice.yaml", "threads: [t]\nlisten: 127.0.0.1:6\nweb_listen_address: [127.0.0.1:7]\n")
    with pytest.raises(ConfigError, match=r"sets --web\.listen-address twice"):
        load_config(["--config", str(twice)], env)
    assert load_config(["--thread", "t", "--web-config-file", ""], env).web_config_file is None


@pytest.mark.parametrize(("path", "problem"), [
    ("/", "/ is served by the exporter itself"),
    ("/healthz", "/healthz is served by the exporter itself"),
    ("/readyz/", "/readyz is served by the exporter itself"),
    ("/api/v1/runs", "/api/ is served by the exporter itself"),
    ("/webhooks/openai", "/webhooks/ is served by the exporter itself"),
    ("metrics", "expected an absolute URL path"),
    ("/a b", "expected an absolute URL path"),
])
def test_a_telemetry_path_the_exporter_serves_itself_is_refused(path: str, problem: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="--web.telemetry-path: " + re.escape(problem)):
        load_config(["--thread", "t", "--web.telemetry-path", path], env)
    moved = load_config(["--thread", "t", "--web.telemetry-path", "/prom/metrics"], env)
    assert moved.telemetry_path == "/prom/metrics"


def test_version(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(["--version"], env)
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"assistants-exporter {__version__}"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(["--help"], env)
    assert info.value.code == 0
    assert "--poll-interval" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ precedence


def test_env_overrides_yaml_and_flag_overrides_env(env: dict[str, str], tmp_path: Path) -> None:
    config_file = write(tmp_path / "c.yaml", "poll_interval: 2.5\nmax_concurrency: 3\nthreads: [a, b]\n"
                        "labels: [assistant_id, model]\nlog_format: json\n")
    env |= {"ASSISTANTS_EXPORTER_CONFIG": str(config_file), "ASSISTANTS_EXPORTER_POLL_INTERVAL": "3",
            "ASSISTANTS_EXPORTER_MAX_CONCURRENCY": "4"}
    c = load_config(["--max-concurrency", "5"], env)
    assert c.config_file == config_file
    assert c.poll_interval == 3.0  # env over YAML
    assert c.max_concurrency == 5  # flag over env
    assert c.threads == ("a", "b")  # YAML over default
    assert c.labels == ("assistant_id", "model")
    assert c.log_format == "json"


def test_env_list_and_bool_values(env: dict[str, str]) -> None:
    env |= {"ASSISTANTS_EXPORTER_THREAD": "a, b,,a", "ASSISTANTS_EXPORTER_LABELS": "",
            "ASSISTANTS_EXPORTER_DEMO": "yes", "OPENAI_ORG_ID": "org-env", "OPENAI_PROJECT_ID": "proj-env"}
    c = load_config([], env)
    assert c.threads == ("a", "b")
    assert c.labels == ()
    assert c.demo is True
    assert (c.organization, c.project) == ("org-env", "proj-env")
    env["ASSISTANTS_EXPORTER_ORGANIZATION"] = "org-ours"  # ours wins over the OpenAI SDK's variable
    assert load_config([], env).organization == "org-ours"
    for false in ("false", "0", "no", "FALSE"):
        assert load_config(["--thread", "a"], env | {"ASSISTANTS_EXPORTER_DEMO": false}).demo is False


def test_flag_threads_replace_env_threads(env: dict[str, str]) -> None:
    env["ASSISTANTS_EXPORTER_THREAD"] = "a,b"
    assert load_config(["--thread", "c"], env).threads == ("c",)


def test_empty_labels_flag(env: dict[str, str]) -> None:
    assert load_config(["--thread", "a", "--labels", ""], env).labels == ()
    assert load_config(["--thread", "a", "--labels", "model"], env).labels == ("model",)


def test_key_file_wins_over_env(env: dict[str, str], tmp_path: Path) -> None:
    key_file = write(tmp_path / "key", "from-file-key\n")
    env["ASSISTANTS_EXPORTER_API_KEY_FILE"] = str(key_file)
    assert load_config(["--thread", "a"], env).api_key == "from-file-key"


def test_assistants_exporter_api_key_env(env: dict[str, str]) -> None:
    del env["OPENAI_API_KEY"]
    env["ASSISTANTS_EXPORTER_API_KEY"] = KEY
    assert load_config(["--thread", "a"], env).api_key == KEY


def test_demo_needs_no_key_or_threads(env: dict[str, str]) -> None:
    del env["OPENAI_API_KEY"]
    c = load_config(["--demo"], env)
    assert c.demo and c.api_key is None and c.threads == ()


def test_long_poll_interval_raises_idle_default(env: dict[str, str]) -> None:
    c = load_config(["--thread", "a", "--poll-interval", "120"], env)
    assert c.idle_poll_interval == 120.0


def test_state_file_defaults() -> None:
    assert default_state_file({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == Path(
        "/x/state/assistants-exporter/state.db")
    home_default = Path("/h/.local/state/assistants-exporter/state.db")
    assert default_state_file({"HOME": "/h"}) == home_default
    assert default_state_file({"XDG_STATE_HOME": "relative", "HOME": "/h"}) == home_default  # per XDG spec


def test_home_state_default_used_without_xdg(env: dict[str, str], tmp_path: Path) -> None:
    del env["XDG_STATE_HOME"]
    c = load_config(["--thread", "a"], env)
    assert c.state_file == tmp_path / "home" / ".local" / "state" / "assistants-exporter" / "state.db"


def test_unknown_env_vars_become_warnings(env: dict[str, str]) -> None:
    env["ASSISTANTS_EXPORTER_POLL_INTERVALL"] = "1"
    c = load_config(["--thread", "a"], env)
    assert c.warnings == ("ignoring unknown environment variable ASSISTANTS_EXPORTER_POLL_INTERVALL",)


@pytest.mark.parametrize(("text", "expected"), [
    ("0.0.0.0:9788", ("0.0.0.0", 9788)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("localhost:65535", ("localhost", 65535)),
    ("[::1]:9788", ("::1", 9788)),
    ("[::]:80", ("::", 80)),
    (":9788", ("0.0.0.0", 9788)),
])
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(("argv", "flag"), [
    (["--poll-interval", "fast"], "--poll-interval"),
    (["--poll-interval", "0.05"], "--poll-interval"),
    (["--poll-interval", "nan"], "--poll-interval"),
    (["--idle-poll-interval", "1"], "--idle-poll-interval"),
    (["--max-concurrency", "0"], "--max-concurrency"),
    (["--max-concurrency", "257"], "--max-concurrency"),
    (["--max-concurrency", "2.5"], "--max-concurrency"),
    (["--max-requests-per-second", "0"], "--max-requests-per-second"),
    (["--terminal-retention", "-1"], "--terminal-retention"),
    (["--demo-speed", "0"], "--demo-speed"),
    (["--labels", "assistant_id,thread_id"], "--labels"),
    (["--listen", "9788"], "--web.listen-address"),
    (["--listen", "::1:9788"], "--web.listen-address"),
    (["--listen", "host:99999"], "--web.listen-address"),
    (["--listen", "[::1]"], "--web.listen-address"),
    (["--web.listen-address", "127.0.0.1:1", "--web.listen-address", "nope"], "--web.listen-address"),
    (["--api-base", "ftp://example.com"], "--api-base"),
    (["--api-base", "not a url"], "--api-base"),
    (["--auth-header", "basic"], "--auth-header"),
    (["--log-level", "verbose"], "--log-level"),
    (["--log-format", "xml"], "--log-format"),
    (["--thread", "thread/../x"], "--thread"),
    (["--thread", "x" * 257], "--thread"),
    (["--poll-interval"], "--poll-interval"),
])
def test_bad_flag_values(argv: list[str], flag: str, env: dict[str, str]) -> None:
    message = error_of([*argv, "--thread", "t"] if "--thread" not in argv else argv, env)
    assert flag in message


def test_bad_env_value_names_flag_and_variable(env: dict[str, str]) -> None:
    env["ASSISTANTS_EXPORTER_POLL_INTERVAL"] = "soon"
    message = error_of(["--thread", "a"], env)
    assert "--poll-interval" in message and "ASSISTANTS_EXPORTER_POLL_INTERVAL" in message


def test_bad_env_bool(env: dict[str, str]) -> None:
    env["ASSISTANTS_EXPORTER_DEMO"] = "maybe"
    assert "--demo" in error_of(["--thread", "a"], env)


def test_unreadable_key_file(env: dict[str, str], tmp_path: Path) -> None:
    message = error_of(["--thread", "a", "--api-key-file", str(tmp_path / "missing")], env)
    assert "--api-key-file" in message and "missing" in message


def test_empty_key_file(env: dict[str, str], tmp_path: Path) -> None:
    assert "--api-key-file" in error_of(["--thread", "a", "--api-key-file", str(write(tmp_path / "k", "\n"))],
                                        env)


def test_missing_key_without_demo(env: dict[str, str]) -> None:
    del env["OPENAI_API_KEY"]
    message = error_of(["--thread", "a"], env)
    assert "OPENAI_API_KEY" in message and "--api-key-file" in message


def test_missing_threads_without_demo(env: dict[str, str]) -> None:
    message = error_of([], env)
    assert "--thread" in message and "--threads-file" in message


def test_missing_threads_file(env: dict[str, str], tmp_path: Path) -> None:
    assert "--threads-file" in error_of(["--threads-file", str(tmp_path / "nope.txt")], env)


def test_api_key_flag_is_rejected_without_echoing_it(env: dict[str, str]) -> None:
    for argv in (["--api-key", KEY], [f"--api-key={KEY}"]):
        message = error_of(["--thread", "a", *argv], env)
        assert "--api-key" in message and "OPENAI_API_KEY" in message


def test_unknown_flag_and_no_abbreviations(env: dict[str, str]) -> None:
    assert "--bogus" in error_of(["--thread", "a", "--bogus", "1"], env)
    assert "--poll" in error_of(["--thread", "a", "--poll", "1"], env)  # no prefix matching


def test_stray_positional_not_echoed(env: dict[str, str]) -> None:
    message = error_of(["--thread", "a", "whatever-secret-value"], env)
    assert "whatever-secret-value" not in message


def test_api_base_credentials_not_echoed(env: dict[str, str]) -> None:
    message = error_of(["--thread", "a", "--api-base", f"https://user:{KEY}@example.com/v1"], env)
    assert "--api-base" in message


def test_key_pasted_into_another_setting_not_echoed(env: dict[str, str], tmp_path: Path) -> None:
    assert "--api-base" in error_of(["--thread", "a", "--api-base", KEY], env)
    file_key = "file-key-DISTINCTIVE-777"
    key_file = write(tmp_path / "k", file_key)
    message = error_of(["--api-key-file", str(key_file), "--thread", "a", "--labels", file_key], env)
    assert "--labels" in message and file_key not in message


def test_api_base_query_not_echoed(env: dict[str, str]) -> None:
    message = error_of(["--thread", "a", "--api-base", f"https://example.com/v1?api-key={KEY}"], env)
    assert "--api-base" in message


# ------------------------------------------------------------------------------------------ YAML


def test_yaml_unknown_key(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "threads: [a]\npoll_intervall: 3\n")
    message = error_of(["--config", str(f)], env)
    assert "--config" in message and "poll_intervall" in message


def test_yaml_dashed_key_gets_a_hint(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "threads: [a]\npoll-interval: 3\n")
    assert "did you mean 'poll_interval'" in error_of(["--config", str(f)], env)


def test_yaml_api_key_rejected(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", f"threads: [a]\napi_key: {KEY}\n")
    message = error_of(["--config", str(f)], env)
    assert "api_key" in message and "OPENAI_API_KEY" in message and "api_key_file" in message


def test_yaml_not_a_mapping(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "- a\n- b\n")
    assert "mapping" in error_of(["--config", str(f)], env)


def test_yaml_syntax_error(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "threads: [a\n")
    message = error_of(["--config", str(f)], env)
    assert "--config" in message and "YAML" in message


def test_unreadable_config_file(env: dict[str, str], tmp_path: Path) -> None:
    message = error_of(["--config", str(tmp_path / "absent.yaml")], env)
    assert "--config" in message and "absent.yaml" in message


def test_yaml_bad_value_names_flag_and_file(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "threads: [a]\nmax_concurrency: many\n")
    message = error_of(["--config", str(f)], env)
    assert "--max-concurrency" in message and "c.yaml" in message


def test_yaml_typed_values(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "threads: [a]\ndemo: true\napi_version: 2024-05-01\n"
              "labels: []\nlisten: '127.0.0.1:0'\napi_base: null\n")
    c = load_config(["--config", str(f)], env)
    assert c.demo is True
    assert c.api_version == "2024-05-01"  # YAML's date is taken as the string it was written as
    assert c.labels == ()
    assert (c.listen_host, c.listen_port) == ("127.0.0.1", 0)
    assert c.api_base == "https://api.openai.com/v1"  # null means "not set"


def test_yaml_bool_not_accepted_as_number(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "c.yaml", "threads: [a]\npoll_interval: true\n")
    assert "--poll-interval" in error_of(["--config", str(f)], env)


# ------------------------------------------------------------------------------------------ secrets


def test_key_not_in_repr(env: dict[str, str], tmp_path: Path) -> None:
    c = load_config(["--thread", "a"], env)
    assert KEY not in repr(c) and KEY not in str(c)
    assert c.secrets() == (KEY,)
    key_file = write(tmp_path / "k", KEY)
    assert KEY not in repr(load_config(["--thread", "a", "--api-key-file", str(key_file)], env))


def test_unwritable_state_dir(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    # Permission bits do not stop root (CI runs as root), so the access check itself is made to refuse.
    monkeypatch.setattr("exporter.config.os.access", lambda path, mode: Path(path) != locked)
    assert "is not writable" in error_of(["--thread", "a", "--state-file", str(locked / "s.db")], env)


def test_state_file_under_a_file(env: dict[str, str], tmp_path: Path) -> None:
    blocker = write(tmp_path / "file", "")
    assert "--state-file" in error_of(["--thread", "a", "--state-file", str(blocker / "s.db")], env)


# ------------------------------------------------------------------------------------------ threads file


@pytest.mark.parametrize("text", ['x: "\\U10010000"\n', "poll_interval: 2024-02-30\n", "[" * 5000 + "]" * 5000])
def test_yaml_values_pyyaml_cannot_read_are_config_errors(env: dict[str, str], tmp_path: Path, text: str) -> None:
    # PyYAML raises ValueError / RecursionError, not YAMLError, for these; they used to escape as tracebacks.
    f = write(tmp_path / "c.yaml", text)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(["--config", str(f), "--thread", "a"], env)


def test_yaml_integer_beyond_a_float_is_a_config_error(env: dict[str, str], tmp_path: Path) -> None:
    # float(10**400) raises OverflowError; it used to escape as a traceback.
    f = write(tmp_path / "c.yaml", f"poll_interval: {10**400}\n")
    with pytest.raises(ConfigError, match=r"--poll-interval.*finite"):
        load_config(["--config", str(f), "--thread", "a"], env)


def test_parse_threads() -> None:
    text = "# watched threads\n\nthread_a\n  thread_b  \nthread_a\nthread_c # inline comment\n" \
           "bad id\nthread/x\n" + "y" * 257 + "\n\tthread_d\r\n"
    parsed = parse_threads(text)
    assert parsed.ids == ("thread_a", "thread_b", "thread_c", "thread_d")
    assert [n for n, _ in parsed.invalid] == [7, 8, 9]


def test_read_threads_file_returns_invalid_lines_without_logging(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = write(tmp_path / "t.txt", "a\nb c\na\n")
    with caplog.at_level(logging.DEBUG):
        parsed = read_threads_file(f)
    assert parsed.ids == ("a",)
    assert [n for n, _ in parsed.invalid] == [2]
    assert caplog.records == []  # the caller logs, once per change of the file


def test_threads_file_bom_is_stripped(tmp_path: Path) -> None:
    # Notepad writes a BOM; it used to become part of the first id and be polled as %EF%BB%BF....
    f = tmp_path / "t.txt"
    f.write_bytes(b"\xef\xbb\xbfthread_a\r\nthread_b\r\n")
    assert read_threads_file(f).ids == ("thread_a", "thread_b")
    assert parse_threads("\ufeffthread_a\n").ids == ("thread_a",)
    # A BOM further down (files concatenated) is not stripped, but rejected with the line, never polled.
    assert parse_threads(b"a\n\xef\xbb\xbfb\n").invalid[0][0] == 2


def test_threads_file_non_utf8_line_rejected_alone(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"thread_a\nthread_\xff\xfeb\nthread_c\n\x80\n")
    parsed = read_threads_file(f)
    assert parsed.ids == ("thread_a", "thread_c")
    assert parsed.invalid == ((2, NOT_UTF8), (4, NOT_UTF8))


def test_watcher_keeps_good_lines_and_logs_once_per_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "t.txt"
    f.write_bytes(b"thread_a\n\xff\n")
    watcher = ThreadsFileWatcher(f, read_threads_file)
    assert watcher.changed() and watcher.threads == ("thread_a",)
    assert watcher.take_rejected() == 1  # counted in invalid_objects_total{reason="threads_file_line"}
    assert not watcher.changed()  # unchanged file: not re-read, not re-logged, not counted again
    assert watcher.take_rejected() == 0
    assert [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()] == [
        f"threads file {f} line 2 skipped: {NOT_UTF8}"]


def test_an_unreadable_threads_file_is_logged_once_not_at_every_check(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Regression: 'cannot read threads file' was logged every second while the file was missing."""
    f = tmp_path / "t.txt"
    f.write_text("thread_a\n")
    watcher = ThreadsFileWatcher(f, read_threads_file)
    assert watcher.changed()
    f.unlink()
    for _ in range(5):
        assert not watcher.changed()
    assert sum("cannot read threads file" in r.getMessage() for r in caplog.records) == 1
    assert watcher.threads == ("thread_a",)  # the last good list is kept
    f.write_text("thread_b\n")
    assert watcher.changed() and watcher.threads == ("thread_b",)


def test_threads_file_bytes_and_text_agree() -> None:
    text = "# head\nthread_a\r\nbad id\n\nthread_b # c\rthread_a\n"
    assert parse_threads(text.encode("utf-8")) == parse_threads(text)


def test_read_threads_file_missing(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        read_threads_file(tmp_path / "missing")


def test_threads_file_in_config(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "t.txt", "a\n")
    c = load_config(["--threads-file", str(f)], env)
    assert c.threads_file == f and c.threads == ()


# ------------------------------------------------------------------------------------------ docs


def test_configuration_doc_lists_every_setting() -> None:
    doc = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = [line for line in doc.splitlines() if line.startswith("| `--")]
    assert len(rows) == len(FLAGS)
    for flag, row in zip(FLAGS, rows, strict=True):
        assert row.startswith(f"| `{flag.name}"), row
        assert f"`{flag.env}`" in row
        for alias in flag.env_aliases:
            assert f"`{alias}`" in row
        assert (f"`{flag.yaml_key}`" if flag.yaml_key else "—") in row


def test_configuration_doc_example_uses_known_keys() -> None:
    doc = (REPO_ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(example)
    assert set(data) <= set(YAML_KEYS)


# ------------------------------------------------------------------------------------------ properties


_ID_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/\\?#%")
_NOT_IDS = ("# c", "", "bad id", "x/y", ".", "..")  # "." and ".." are path segments, not ids


@given(st.lists(st.one_of(st.text(_ID_CHARS, min_size=1, max_size=20), st.just("# c"), st.just(""),
                          st.just("bad id"), st.just("x/y")), max_size=30))
def test_parse_threads_properties(lines: list[str]) -> None:
    parsed = parse_threads("\n".join(lines))
    assert len(set(parsed.ids)) == len(parsed.ids)
    expected = [line for line in lines if line not in _NOT_IDS]
    assert list(parsed.ids) == list(dict.fromkeys(expected))


@given(st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)), st.integers(0, 65535))
def test_listen_round_trips(host: str, port: int) -> None:
    c = Config(listen_addresses=(format_listen(host, port),), state_file=Path("/nonexistent/s.db"))
    assert parse_listen(c.listen) == (host, port)


@pytest.mark.parametrize("key", ["push_token_file", "threads_file", "state_file", "api_key_file", "threads"])
def test_a_nul_character_in_a_setting_is_a_one_line_error(tmp_path: Path, key: str) -> None:
    """Regression (found by the fuzz test): a path with a NUL byte raised ValueError from open()."""
    config = tmp_path / "c.yaml"
    config.write_text(f'{key}: "a\\0b"\n')
    with pytest.raises(ConfigError, match="NUL character"):
        load_config(["--config", str(config), "--demo"], {"HOME": str(tmp_path)})


def test_a_yaml_escape_far_beyond_unicode_is_a_one_line_error(tmp_path: Path) -> None:
    """Regression (found by the fuzz test): PyYAML raised OverflowError for "\\Ua0010000"."""
    config = tmp_path / "c.yaml"
    config.write_bytes(b'"0\\x1F\\e\\Ua0010000": \'\'\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(["--config", str(config), "--demo"], {"HOME": str(tmp_path)})
