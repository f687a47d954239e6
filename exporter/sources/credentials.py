"""Entra ID bearer tokens for httpx, from azure-identity's DefaultAzureCredential (the `azure` extra).

Foundry accepts only Entra ID tokens, which expire (typically after an hour), so a static key goes blind.
`AzureTokenAuth` asks a credential for a token, caches it, refreshes it ahead of expiry, and on a 401 drops
it, asks again and retries the request once. The credential's calls block (HTTP to an identity endpoint, or
a subprocess for `az login`), so they run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

DEFAULT_SCOPE = "https://ai.azure.com/.default"
INSTALL_HINT = "pip install 'assistants-exporter[azure]'"
REFRESH_MARGIN = 300.0  # seconds before expiry, as azure-identity itself does
MIN_RECHECK = 5.0  # if the credential hands back a token already due, ask again at most this often
_JWT = re.compile(r"eyJ[\w-]*\.[\w-]+\.[\w-]*")
_MAX_MESSAGE = 300


class TokenUnavailable(Exception):
    """No token could be obtained: an outage for the caller. The message never contains a token."""


class CredentialConfigError(Exception):
    """The credential cannot be built (the extra is not installed, or its settings are invalid)."""


class TokenLike(Protocol):
    @property
    def token(self) -> str: ...

    @property
    def expires_on(self) -> int: ...


class TokenCredential(Protocol):
    """What azure-core's TokenCredential offers; `get_token_info` (with refresh_on) is optional."""

    def get_token(self, *scopes: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class CachedToken:
    token: str
    expires_on: float
    refresh_at: float  # when to ask the credential again


def default_credential() -> TokenCredential:
    """azure-identity's DefaultAzureCredential (honours AZURE_TOKEN_CREDENTIALS, AZURE_CLIENT_ID, ...)."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise CredentialConfigError(f"--credential azure needs azure-identity: {INSTALL_HINT}") from None
    try:
        credential: TokenCredential = DefaultAzureCredential()
    except ValueError as err:  # e.g. an invalid AZURE_TOKEN_CREDENTIALS value
        raise CredentialConfigError(one_line(str(err))) from None
    return credential


def one_line(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A message fit for one log line: no line breaks, no JWT-looking strings or known secrets, bounded."""
    text = " ".join(message.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _JWT.sub("[redacted]", text)
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def plan_refresh(
    expires_on: float, refresh_on: float | None, now: float, margin: float = REFRESH_MARGIN, *, fresh: bool = True
) -> float:
    """When to ask for a new token: the credential's refresh_on, else `margin` before expiry.

    A fresh token that lives no longer than the margin is renewed halfway through its life instead of on
    every request. One handed back already due, or the same token again (the credential's own cache can be
    a second behind ours), is asked about again after MIN_RECHECK at most.
    """
    lifetime = expires_on - now
    due = expires_on - (lifetime / 2 if fresh and lifetime <= margin else margin)
    if refresh_on is not None:
        due = min(due, refresh_on)
    if due <= now:
        due = now + min(MIN_RECHECK, max(0.0, lifetime) / 2)
    return due


class AzureTokenAuth(httpx.Auth):
    """httpx auth (async clients only): `Authorization: Bearer <token>` from a TokenCredential."""

    requires_request_body = True  # a request retried after a 401 is sent again, body included

    def __init__(
        self,
        credential: TokenCredential,
        scope: str = DEFAULT_SCOPE,
        *,
        margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credential = credential
        self.scope = scope
        self.margin = margin
        self.clock = clock  # epoch seconds: expires_on and refresh_on are Unix times
        self._cached: CachedToken | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0  # credential calls made, for logs and tests

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # The credential blocks; a sync client would block whatever thread it runs on. Fail loudly instead.
        raise RuntimeError("AzureTokenAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # The API no longer takes this token (revoked, clock skew, an early rotation): refresh and retry once.
        fresh = await self.token(rejected=token)
        request.headers["Authorization"] = f"Bearer {fresh}"
        yield request

    async def token(self, rejected: str | None = None) -> str:
        """A valid token; `rejected` names one the API refused, which forces a refresh (shared if concurrent)."""
        cached = self._cached
        if cached is not None and cached.token != rejected and self.clock() < cached.refresh_at:
            return cached.token
        async with self._lock:  # concurrent requests share one refresh
            cached = self._cached
            if cached is not None and cached.token != rejected and self.clock() < cached.refresh_at:
                return cached.token  # another request refreshed it while this one waited
            try:
                self._cached = await asyncio.to_thread(self._fetch)
            except TokenUnavailable:
                now = self.clock()
                if cached is None or cached.token == rejected or now >= cached.expires_on:
                    raise
                # An early refresh failed but the token is still valid: keep using it, ask again soon.
                self._cached = CachedToken(cached.token, cached.expires_on, now + MIN_RECHECK)
            return self._cached.token

    def _fetch(self) -> CachedToken:
        """Ask the credential (in a worker thread). Any failure becomes TokenUnavailable."""
        self.fetches += 1
        get_token_info = getattr(self.credential, "get_token_info", None)
        known = (self._cached.token,) if self._cached is not None else ()
        try:
            if callable(get_token_info):
                info = get_token_info(self.scope)
                token, expires_on, refresh_on = info.token, float(info.expires_on), info.refresh_on
            else:
                access = self.credential.get_token(self.scope)
                token, expires_on, refresh_on = access.token, float(access.expires_on), None
        except Exception as err:  # any credential failure is an outage, never a crash
            detail = one_line(str(err), known)
            raise TokenUnavailable(f"cannot get a token for {self.scope}: {type(err).__name__}: {detail}") from None
        if not isinstance(token, str) or not token:
            raise TokenUnavailable(f"cannot get a token for {self.scope}: the credential returned an empty token")
        now = self.clock()
        refresh = float(refresh_on) if isinstance(refresh_on, int | float) else None
        fresh = not known or token != known[0]
        return CachedToken(token, expires_on, plan_refresh(expires_on, refresh, now, self.margin, fresh=fresh))

    def close(self) -> None:
        close = getattr(self.credential, "close", None)
        if callable(close):
            close()
