"""Logging: redaction in both formats, JSON lines that parse, and the once-per-interval limiter."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from exporter import logs

SECRET = "my-registered-DISTINCTIVE-secret-42"


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Undo setup_logging: our handler, root level, record factory, registered secrets."""
    root = logging.getLogger()
    level, handlers, factory = root.level, list(root.handlers), logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs.clear_secrets()
    logging.captureWarnings(False)


def emit(capsys: pytest.CaptureFixture[str], fmt: str, secrets: tuple[str, ...] = (SECRET,)) -> list[str]:
    logs.setup_logging("info", fmt, secrets)
    log = logging.getLogger("exporter.test")
    log.info("using key %s", SECRET)
    log.warning("request failed: Authorization: Bearer abc.DEF-123_xyz sent to %s", "https://api.example/v1")
    log.error("key in message sk-proj-ABCDEF123456 and %(k)s", {"k": SECRET})
    log.info("debug header api-key: 0123456789abcdef")
    try:
        raise RuntimeError(f"boom with {SECRET}")
    except RuntimeError:
        log.exception("failure")
    log.info("with extra", extra={"thread_id": "thread_a", "token": SECRET})
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_redacted(capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    lines = emit(capsys, fmt)
    out = "\n".join(lines)
    assert SECRET not in out
    assert "abc.DEF-123_xyz" not in out
    assert "sk-proj-ABCDEF123456" not in out
    assert "0123456789abcdef" not in out
    assert "using key ***" in out
    assert "Bearer ***" in out
    assert "https://api.example/v1" in out  # ordinary args survive


def test_text_format(capsys: pytest.CaptureFixture[str]) -> None:
    lines = emit(capsys, "text")
    assert lines[0].endswith(" info exporter.test: using key ***")
    assert any(line.startswith("Traceback") for line in lines)  # tracebacks kept, but redacted


def test_json_lines_parse(capsys: pytest.CaptureFixture[str]) -> None:
    lines = emit(capsys, "json")
    objs = [json.loads(line) for line in lines]
    assert len(objs) == 6  # one object per record, tracebacks included as a field
    assert objs[0]["level"] == "info" and objs[0]["logger"] == "exporter.test"
    assert objs[0]["msg"] == "using key ***"
    assert objs[0]["ts"].endswith("Z")
    assert "RuntimeError" in objs[4]["exc"] and SECRET not in objs[4]["exc"]
    assert objs[5]["thread_id"] == "thread_a" and objs[5]["token"] == "***"


def test_register_secret_later(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("info", "text")
    logs.register_secret("late-secret-value")
    logging.getLogger("x").warning("got %s", "late-secret-value")
    assert "late-secret-value" not in capsys.readouterr().err


def test_short_secrets_ignored() -> None:
    logs.register_secret("ab")
    logs.register_secret("")
    assert logs.redact("ab cd") == "ab cd"


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("warning", "text")
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err and "shown" in err


def test_setup_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    logs.setup_logging("info", "text")
    logs.setup_logging("info", "json")
    logging.getLogger("x").info("once")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["msg"] == "once"


def test_redaction_reaches_other_handlers(caplog: pytest.LogCaptureFixture) -> None:
    # pytest's handler was on the root before ours; the record factory redacts before any handler runs.
    logs.setup_logging("info", "text", [SECRET])
    logging.getLogger("x").warning("k=%s", SECRET)
    assert SECRET not in caplog.text


def test_clean_records_keep_msg_and_args(caplog: pytest.LogCaptureFixture) -> None:
    logs.setup_logging("info", "text", [SECRET])
    logging.getLogger("x").warning("polled %s", "thread_a")
    assert caplog.records[-1].msg == "polled %s" and caplog.records[-1].args == ("thread_a",)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        logs.setup_logging("loud", "text")
    with pytest.raises(ValueError):
        logs.setup_logging("info", "xml")


def test_rate_limiter() -> None:
    limiter = logs.RateLimiter(60.0)
    assert limiter.allow("missing_id", 1000.0)
    assert not limiter.allow("missing_id", 1059.9)
    assert limiter.allow("bad_status", 1001.0)  # keys are independent
    assert limiter.allow("missing_id", 1060.0)


def test_log_once_per() -> None:
    assert logs.log_once_per("test_logs:reason", 60.0, 5000.0)
    assert not logs.log_once_per("test_logs:reason", 60.0, 5030.0)
    assert logs.log_once_per("test_logs:reason", 60.0, 5060.0)


def test_counting_rate_limiter_says_how_many_lines_it_held_back_per_key() -> None:
    limiter = logs.CountingRateLimiter(60.0)
    assert limiter.allow("a", 0.0) == 0
    assert [limiter.allow("a", t) for t in (1.0, 2.0, 59.9)] == [None, None, None]
    assert limiter.allow("b", 30.0) == 0  # keys are independent
    assert limiter.pending("a") == 3 and limiter.pending("b") == 0
    assert limiter.allow("a", 60.0) == 3
    assert limiter.pending("a") == 0
    assert limiter.allow("a", 61.0) is None and limiter.allow("a", 121.0) == 1
