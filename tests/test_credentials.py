"""Entra ID token auth: caching, refresh ahead of expiry, 401 retry, failures; real azure-identity vs the simulator."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken, AccessTokenInfo
from azure.core.exceptions import ClientAuthenticationError

from exporter.simulator import Simulator
from exporter.sources.credentials import (
    DEFAULT_SCOPE,
    INSTALL_HINT,
    AzureTokenAuth,
    CredentialConfigError,
    TokenUnavailable,
    default_credential,
    plan_refresh,
)
from tests.conftest import FakeTime

T0 = 1_760_000_000.0
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2FpLmF6dXJlLmNvbSJ9.c2lnbmF0dXJl"


class FakeCredential:
    """A TokenCredential with get_token only: tok-1, tok-2, ... each living `lifetime` seconds."""

    def __init__(self, clock: FakeTime, lifetime: float = 3600.0) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.calls: list[tuple[str, ...]] = []
        self.threads: set[int] = set()
        self.fail_with: Exception | None = None
        self.gate: threading.Event | None = None  # when set, a call waits for it (to hold a refresh open)
        self.entered = threading.Event()

    def _next(self, scopes: tuple[str, ...]) -> tuple[str, int]:
        self.threads.add(threading.get_ident())
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10.0)
        if self.fail_with is not None:
            raise self.fail_with
        self.calls.append(scopes)
        return f"tok-{len(self.calls)}", int(self.clock() + self.lifetime)

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        token, expires_on = self._next(scopes)
        return AccessToken(token, expires_on)


class FakeInfoCredential(FakeCredential):
    """A credential that also has get_token_info, with refresh_on `refresh_in` seconds after issue."""

    def __init__(self, clock: FakeTime, lifetime: float = 3600.0, refresh_in: float | None = None) -> None:
        super().__init__(clock, lifetime)
        self.refresh_in = refresh_in

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        token, expires_on = self._next(scopes)
        refresh_on = None if self.refresh_in is None else int(self.clock() + self.refresh_in)
        return AccessTokenInfo(token, expires_on, refresh_on=refresh_on)


Handler = Callable[[httpx.Request], httpx.Response]


def api(auth: httpx.Auth, handler: Handler | None = None) -> httpx.AsyncClient:
    seen: list[httpx.Request] = []

    def default(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"auth": request.headers.get("Authorization")})

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return (handler or default)(request)

    client = httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(record), auth=auth)
    client.seen = seen  # type: ignore[attr-defined]
    return client


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())  # type: ignore[arg-type]


async def bearer(client: httpx.AsyncClient) -> str:
    resp = await client.get("/threads")
    assert resp.status_code == 200
    value: str = resp.json()["auth"]
    return value


# ----- refresh planning ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expires_in", "refresh_in", "due_in"),
    [
        (3600, None, 3300),  # 300 s before expiry, as azure-identity does
        (310, None, 10),  # the example: a 310 s token is renewed after ~10 s
        (86_400, 43_200, 43_200),  # the credential's refresh_on comes first
        (3600, 4000, 3300),  # a refresh_on after the margin does not delay the refresh
        (60, None, 30),  # shorter than the margin: halfway, not on every request
        (0, None, 0),  # already expired: ask again now
    ],
)
def test_plan_refresh(expires_in: float, refresh_in: float | None, due_in: float) -> None:
    refresh_on = None if refresh_in is None else T0 + refresh_in
    assert plan_refresh(T0 + expires_in, refresh_on, T0) == T0 + due_in


def test_a_token_handed_back_already_due_is_asked_about_again_after_a_few_seconds() -> None:
    assert plan_refresh(T0 + 100, T0 - 5, T0) == T0 + 5
    # The same 310 s token handed back at +10 s (the credential's cache a second behind): not kept halfway.
    assert plan_refresh(T0 + 300, None, T0, fresh=False) == T0 + 5
    assert plan_refresh(T0 + 300, None, T0, fresh=True) == T0 + 150


def test_the_same_token_handed_back_when_due_is_asked_about_again_soon() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock, lifetime=310)
    repeat = {"left": 1}
    original = cred.get_token

    def lagging(*scopes: str, **kwargs: Any) -> AccessToken:
        if cred.calls and repeat["left"]:  # one call answered from a cache that is a second behind
            repeat["left"] -= 1
            return AccessToken("tok-1", int(T0 + 310))
        return original(*scopes, **kwargs)

    cred.get_token = lagging  # type: ignore[method-assign]

    async def go() -> list[str]:
        async with api(AzureTokenAuth(cred, clock=clock)) as client:
            seen = [await bearer(client)]
            clock.now = T0 + 10  # due: the credential hands back tok-1 once more
            seen.append(await bearer(client))
            clock.now = T0 + 14
            seen.append(await bearer(client))
            clock.now = T0 + 15  # MIN_RECHECK later, not halfway through the remaining 300 s
            seen.append(await bearer(client))
            return seen

    assert run(go) == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


# ----- the auth flow with a fake credential ------------------------------------------------------------


def test_the_token_is_cached_and_sent_as_a_bearer_for_the_default_scope() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock)

    async def go() -> list[str]:
        async with api(AzureTokenAuth(cred, clock=clock)) as client:
            return [await bearer(client) for _ in range(5)]

    assert run(go) == ["Bearer tok-1"] * 5
    assert cred.calls == [(DEFAULT_SCOPE,)]


def test_get_token_refreshes_300_s_before_expires_on() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock, lifetime=3600)

    async def go() -> list[str]:
        async with api(AzureTokenAuth(cred, "https://example/.default", clock=clock)) as client:
            seen = [await bearer(client)]
            clock.now = T0 + 3299
            seen.append(await bearer(client))
            clock.now = T0 + 3300
            seen.append(await bearer(client))
            return seen

    assert run(go) == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]
    assert cred.calls == [("https://example/.default",)] * 2


def test_get_token_info_refresh_on_is_honoured() -> None:
    clock = FakeTime(T0)
    cred = FakeInfoCredential(clock, lifetime=86_400, refresh_in=100)

    async def go() -> list[str]:
        async with api(AzureTokenAuth(cred, clock=clock)) as client:
            seen = [await bearer(client)]
            clock.now = T0 + 99
            seen.append(await bearer(client))
            clock.now = T0 + 100
            seen.append(await bearer(client))
            return seen

    assert run(go) == ["Bearer tok-1", "Bearer tok-1", "Bearer tok-2"]


def test_a_401_forces_one_refresh_and_one_retry_with_the_body() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock)

    sent: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.headers["Authorization"], request.content))
        ok = request.headers["Authorization"] != "Bearer tok-1"  # the API revoked the first token
        return httpx.Response(200 if ok else 401)

    async def go() -> int:
        async with api(AzureTokenAuth(cred, clock=clock), handler) as client:
            return (await client.post("/threads", json={"a": 1})).status_code

    assert run(go) == 200
    assert sent == [("Bearer tok-1", b'{"a":1}'), ("Bearer tok-2", b'{"a":1}')]
    assert len(cred.calls) == 2


def test_a_second_401_is_returned_not_retried_again() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock)

    async def go() -> tuple[int, int]:
        async with api(AzureTokenAuth(cred, clock=clock), lambda r: httpx.Response(401)) as client:
            resp = await client.get("/threads")
            return resp.status_code, len(client.seen)  # type: ignore[attr-defined]

    assert run(go) == (401, 2)
    assert len(cred.calls) == 2


def test_concurrent_requests_share_one_refresh_which_runs_off_the_event_loop() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock)
    cred.gate = threading.Event()
    loop_thread = threading.get_ident()

    async def go() -> list[str]:
        async with api(AzureTokenAuth(cred, clock=clock)) as client:
            tasks = [asyncio.create_task(bearer(client)) for _ in range(20)]
            # The loop keeps running while the credential blocks: this polling coroutine is proof of it.
            deadline = asyncio.get_running_loop().time() + 10
            while not cred.entered.is_set():
                assert asyncio.get_running_loop().time() < deadline, "the credential was never called"
                await asyncio.sleep(0.01)
            assert cred.gate is not None
            cred.gate.set()
            return await asyncio.gather(*tasks)

    assert run(go) == ["Bearer tok-1"] * 20
    assert len(cred.calls) == 1
    assert loop_thread not in cred.threads


def test_a_failure_raises_token_unavailable_without_any_token_in_the_message() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock, lifetime=3600)
    auth = AzureTokenAuth(cred, clock=clock)

    async def go() -> tuple[str, str, BaseException | None]:
        async with api(auth) as client:
            first = await bearer(client)
            # The identity endpoint fails from now on, with a message that quotes tokens.
            cred.fail_with = ClientAuthenticationError(f"token tok-1 refused;\nupstream said {JWT}")
            clock.now = T0 + 3400  # due for refresh, still valid: keep the old token
            kept = await bearer(client)
            clock.now = T0 + 3600  # expired: now it is an outage
            try:
                await client.get("/threads")
            except TokenUnavailable as err:
                return first, kept, err
            return first, kept, None

    first, kept, err = run(go)
    assert first == kept == "Bearer tok-1"
    assert isinstance(err, TokenUnavailable)
    message = str(err)
    assert "tok-1" not in message and JWT not in message and "\n" not in message
    assert "ClientAuthenticationError" in message and DEFAULT_SCOPE in message
    assert err.__cause__ is None and err.__suppress_context__


def test_a_first_failure_is_token_unavailable_too() -> None:
    clock = FakeTime(T0)
    cred = FakeCredential(clock)
    cred.fail_with = RuntimeError("no identity available")

    async def go() -> None:
        async with api(AzureTokenAuth(cred, clock=clock)) as client:
            await client.get("/threads")

    with pytest.raises(TokenUnavailable, match="no identity available"):
        run(go)


def test_sync_clients_are_refused() -> None:
    with (
        httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client,
        pytest.raises(RuntimeError, match="AsyncClient"),
    ):
        client.get("http://127.0.0.1:9/", auth=AzureTokenAuth(FakeCredential(FakeTime(T0))))


# ----- building the credential -------------------------------------------------------------------------


def test_without_the_extra_a_one_line_error_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # import azure.identity now fails
    with pytest.raises(CredentialConfigError) as info:
        default_credential()
    assert INSTALL_HINT in str(info.value) and "\n" not in str(info.value)


def test_an_invalid_azure_token_credentials_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "NoSuchCredential")
    with pytest.raises(CredentialConfigError, match="AZURE_TOKEN_CREDENTIALS"):
        default_credential()


# ----- the real azure-identity against the simulator's managed identity endpoint ---------------------


@pytest.fixture
def identity_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Simulator], None]]:
    """Point azure-identity at a simulator's App Service-style endpoint, and nothing else, for one test."""
    for name in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_SERVER_THUMBPRINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "IMDS_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)

    def point(sim: Simulator) -> None:
        monkeypatch.setenv("IDENTITY_ENDPOINT", sim.identity_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", sim.identity_header)
        monkeypatch.setenv("AZURE_TOKEN_CREDENTIALS", "ManagedIdentityCredential")

    yield point


def test_default_azure_credential_gets_and_caches_tokens_from_the_identity_endpoint(
    identity_env: Callable[[Simulator], None],
) -> None:
    with Simulator(flavor="foundry") as sim:
        identity_env(sim)
        auth = AzureTokenAuth(default_credential())

        async def go() -> list[int]:
            async with httpx.AsyncClient(base_url=sim.base_url, auth=auth, params={"api-version": "v1"}) as client:
                return [(await client.get("/threads")).status_code for _ in range(5)]

        try:
            assert run(go) == [200] * 5
        finally:
            auth.close()
        assert sim.tokens.issued == 1 and auth.fetches == 1


def test_short_token_lifetimes_are_refreshed_before_the_api_refuses_them(
    identity_env: Callable[[Simulator], None],
) -> None:
    # azure-identity renews 300 s before expiry, so a 301 s token is renewed about every second.
    with Simulator(flavor="foundry", token_lifetime=301) as sim:
        identity_env(sim)
        auth = AzureTokenAuth(default_credential())
        codes: list[int] = []

        async def go() -> None:
            async with httpx.AsyncClient(base_url=sim.base_url, auth=auth, params={"api-version": "v1"}) as client:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while sim.tokens.issued < 4:
                    assert loop.time() < deadline, f"only {sim.tokens.issued} tokens issued"
                    codes.append((await client.get("/threads")).status_code)
                    await asyncio.sleep(0.1)  # a request rate, not synchronisation

        try:
            run(go)
        finally:
            auth.close()
        assert set(codes) == {200}  # every token was replaced before the simulator refused it
        assert auth.fetches >= 3


def test_a_refused_identity_request_is_token_unavailable_without_the_identity_secret(
    identity_env: Callable[[Simulator], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Simulator(flavor="foundry", identity_header="the-real-secret") as sim:
        identity_env(sim)
        monkeypatch.setenv("IDENTITY_HEADER", "a-wrong-secret")
        auth = AzureTokenAuth(default_credential())

        async def go() -> None:
            async with httpx.AsyncClient(base_url=sim.base_url, auth=auth, params={"api-version": "v1"}) as client:
                await client.get("/threads")

        try:
            with pytest.raises(TokenUnavailable) as info:
                run(go)
        finally:
            auth.close()
        message = str(info.value)
        assert "the-real-secret" not in message and "a-wrong-secret" not in message
        assert "\n" not in message and sim.tokens.issued == 0
