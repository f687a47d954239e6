"""Logging setup: text or JSON lines on stderr, with secrets redacted from every record.

Redaction happens in layers on purpose: a log-record factory and a handler filter rewrite each record's
message and args (so every handler, ours or not, sees the redacted text), and our formatters redact their
final output (which also covers tracebacks and extra fields that a message filter cannot see).
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable
from typing import Any

REDACTED = "***"
_OUR_HANDLER = "_assistants_exporter_handler"
_OUR_FACTORY = "_assistants_exporter_redacting_factory"
_MIN_SECRET_LEN = 4  # shorter strings would redact ordinary words

_secrets: set[str] = set()
_secrets_lock = threading.Lock()

# Things that look like credentials even when nobody registered them.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1" + REDACTED),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), REDACTED),
    (re.compile(r"(?i)(api[-_]?key[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)[^\s\"',;}]+"),
     r"\1" + REDACTED),
)

# Attributes every LogRecord has; anything else came from `extra=` and goes into the JSON object.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def register_secret(secret: str | None) -> None:
    """Redact this exact string from all log output from now on."""
    if secret and len(secret.strip()) >= _MIN_SECRET_LEN:
        with _secrets_lock:
            _secrets.add(secret.strip())


def clear_secrets() -> None:
    """Forget registered secrets (for tests)."""
    with _secrets_lock:
        _secrets.clear()


def redact(text: str) -> str:
    """text with registered secrets and credential-looking tokens replaced by ***."""
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first so overlaps go whole
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_record(record: logging.LogRecord) -> None:
    """Replace msg/args by the redacted, fully formatted message."""
    try:
        message = record.getMessage()
    except Exception:  # a bad format string; logging reports it at emit time, don't hide the record
        return
    redacted = redact(message)
    if redacted != message:  # leave clean records untouched (msg/args stay as logged, for caplog users)
        record.msg, record.args = redacted, ()


class RedactingFilter(logging.Filter):
    """Handler filter: redacts msg/args of every record the handler sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record)
        return True


def _install_record_factory() -> None:
    """Redact at record creation too, so handlers we don't own (installed before ours, or on other
    loggers) never see a secret either. Installed once; wraps whatever factory was there."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, _OUR_FACTORY, False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record)
        return record

    setattr(factory, _OUR_FACTORY, True)
    logging.setLogRecordFactory(factory)


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """`2024-05-01T12:00:00.000Z info exporter.daemon: message`."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            line += "\n" + record.stack_info.rstrip()
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, any `extra=` fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in obj:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.stack_info:
            obj["stack"] = record.stack_info
        # Redact the serialized line so extra fields and tracebacks are covered too; json escapes
        # never produce a secret from a non-secret, and redaction never breaks the JSON (*** is plain).
        return redact(json.dumps(obj, default=str, ensure_ascii=False))


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(level: str, fmt: str, secrets: Iterable[str] = ()) -> None:
    """Root logging to stderr as `text` or `json` lines, redacting secrets. Idempotent: calling again
    replaces the handler this module installed and leaves other handlers (e.g. pytest's) alone."""
    if level.lower() not in _LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}")
    for secret in secrets:
        register_secret(secret)
    _install_record_factory()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _OUR_HANDLER, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _OUR_HANDLER, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(_LEVELS[level.lower()])
    # httpx logs every request at INFO; that is debug detail for an exporter polling every few seconds.
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(quiet)
    logging.captureWarnings(True)


class RateLimiter:
    """Answers "may I log this now?" at most once per `interval` seconds per key (time passed in)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, now: float) -> bool:
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True


class CountingRateLimiter:
    """Like RateLimiter, and counts what it holds back, so the next line allowed can say how many were not
    logged (time passed in)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str, now: float) -> int | None:
        """None: do not log now. Otherwise log, saying how many lines of this key were held back before."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def pending(self, key: str) -> int:
        """Lines of this key held back since the last one allowed."""
        return self._held.get(key, 0)


_once_per: dict[float, RateLimiter] = {}
_once_per_lock = threading.Lock()


def log_once_per(key: str, interval: float, now: float) -> bool:
    """True if `key` was not allowed within the last `interval` seconds (e.g. an invalid-object reason,
    logged at most once a minute). `now` is any monotonic clock reading supplied by the caller."""
    with _once_per_lock:
        limiter = _once_per.setdefault(interval, RateLimiter(interval))
    return limiter.allow(key, now)
