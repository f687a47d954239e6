"""Secrets read at start: the API key (env or --api-key-file), push tokens and webhook signing secrets.

Every error names the file or the env var and the OS reason, never a secret or a line of the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from exporter.flags import ConfigError, Raw
from exporter.rawsettings import os_reason
from exporter.sources.push import MIN_PUSH_TOKEN, PUSH_TOKEN_ENV, read_token_file
from exporter.sources.spec import API_KEY_ENV_VARS


def env_api_key(env: Mapping[str, str], variables: tuple[str, ...] = API_KEY_ENV_VARS) -> str | None:
    for var in variables:
        value = env.get(var, "").strip()
        if value:
            return value
    return None


def read_api_key(path: Path, raw: Raw | None) -> str:
    origin = f" (from {raw.origin})" if raw else ""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        # The message names the file and the OS reason only, never the content.
        raise ConfigError(f"--api-key-file: cannot read {str(path)!r}: {os_reason(exc)}{origin}") from None
    if not key:
        raise ConfigError(f"--api-key-file: {str(path)!r} is empty{origin}")
    if any(c.isspace() for c in key):
        raise ConfigError(f"--api-key-file: {str(path)!r} must hold only the key (found whitespace inside)")
    return key


def _secret_lines(flag: str, what: str, path: Path, raw: Raw | None) -> list[str]:
    """The non-blank, non-comment lines of a file of secrets; a ConfigError naming the file, never a line."""
    origin = f" (from {raw.origin})" if raw else ""
    try:
        lines = read_token_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{flag}: cannot read {str(path)!r}: {os_reason(exc)}{origin}") from None
    if not lines:
        raise ConfigError(f"{flag}: {str(path)!r} holds no {what}{origin}")
    return lines


def push_tokens(path: Path | None, raw: Raw | None, env: Mapping[str, str]) -> list[str]:
    """Tokens from --push-token-file (one a line), else from the env var; the file wins."""
    if path is None:
        token = env.get(PUSH_TOKEN_ENV, "").strip()
        tokens, where = ([token] if token else []), f"env {PUSH_TOKEN_ENV}"
    else:
        tokens = _secret_lines("--push-token-file", "token", path, raw)
        where = f"--push-token-file {str(path)!r}"
    if any(len(t) < MIN_PUSH_TOKEN or any(c.isspace() for c in t) for t in tokens):
        raise ConfigError(f"{where}: each push token must be at least {MIN_PUSH_TOKEN} characters, with no spaces")
    return tokens


def webhook_secrets(path: Path, raw: Raw | None) -> list[str]:
    """Signing secrets, one a line (two during a rotation). Errors name the file, never a secret."""
    from exporter.sources.webhooks import SecretError, parse_secret

    origin = f" (from {raw.origin})" if raw else ""
    lines = _secret_lines("--webhook-secret-file", "secret", path, raw)
    for number, line in enumerate(lines, 1):
        try:
            parse_secret(line)
        except SecretError as exc:
            raise ConfigError(f"--webhook-secret-file: {str(path)!r}: secret {number}: {exc}{origin}") from None
    return lines


