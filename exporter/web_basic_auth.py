"""`basic_auth_users`: bcrypt hashes, and the ASGI middleware that checks them without letting failed attempts
take the CPU or the event loop.

bcrypt is slow on purpose (~70-100 ms a check at cost 10). So:

- a successful check is remembered under an HMAC of user and password, with a key made at start (no password
  is kept), and a scrape every 15 s costs one set lookup; identical checks in flight are made once;
- checks run in their own thread (never on the event loop, never in the pool that renders /metrics pages),
  CHECKS_AT_ONCE at a time, with at most CHECKS_WAITING more queued: past that, 429 at once;
- each client network (the /24 of an IPv4 address, the /64 of an IPv6 one) gets CLIENT_BURST checks, then one
  every CLIENT_INTERVAL seconds: past that, 429 with Retry-After, without a check. Remembered successes skip
  both limits.

So 50 wrong passwords a second from one network cost about a check a second, from many networks at most one
core; a user whose password is remembered is answered as if nobody else were there, and one logging in for the
first time from another network still gets a check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import bcrypt
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter.web_fields import WebConfigError
from exporter.web_http import OWN_AUTH_PREFIXES, Allowance, plain

BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
CACHE_MAX = 1024  # remembered successful checks; cleared when full (a few users, a few passwords each)
CHECKS_AT_ONCE = 1  # bcrypt threads (exporter-toolkit: one check at a time, under a mutex)
CHECKS_WAITING = 16  # checks queued behind them; past that, 429
CLIENT_BURST = 5  # checks a client network may start at once...
CLIENT_INTERVAL = 1.0  # ...then one every this many seconds
CLIENTS_TRACKED = 4096  # networks whose allowance is remembered (the least recently seen is forgotten)
REALM = "assistants-exporter"
# Unknown users are checked against this hash (of a random string), so the answer's timing does not say
# which users exist.
_UNKNOWN_USER = b"$2b$10$vBv7RoofS0yvzJ6Mk05Ro.V6.XyNX34eFWWzB//CJ5iSbihqpbdhe"


def parse_users(doc: object) -> dict[str, bytes]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise WebConfigError("basic_auth_users must be a mapping of user to bcrypt hash")
    users: dict[str, bytes] = {}
    for user, hashed in doc.items():
        if not isinstance(user, str) or not user or ":" in user:
            raise WebConfigError("basic_auth_users: user names must be non-empty strings without ':'")
        encoded = hashed.encode("utf-8") if isinstance(hashed, str) else b""
        if not encoded.startswith(BCRYPT_PREFIXES) or len(encoded) != 60:
            raise WebConfigError(f"basic_auth_users.{user} is not a bcrypt hash")
        users[user] = encoded
    return users


class BasicAuth:
    """ASGI middleware: HTTP basic auth against bcrypt hashes, for every path but the write endpoints."""

    def __init__(self, app: ASGIApp, users: Mapping[str, bytes] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.clock = clock
        self._key = os.urandom(32)  # process-random: cache keys mean nothing outside this process
        self._users: Mapping[str, bytes] = {}
        self._ok: set[bytes] = set()
        self._pool = ThreadPoolExecutor(CHECKS_AT_ONCE, thread_name_prefix="bcrypt")
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}  # by token: identical checks are made once
        self._queued = 0  # checks running or waiting for the thread
        self._clients: OrderedDict[str, Allowance] = OrderedDict()
        self.checks = 0  # bcrypt checks started
        self.throttled = 0  # attempts answered 429 without a check
        self.set_users(users or {})

    def set_users(self, users: Mapping[str, bytes]) -> None:
        """New users (a reload): checks cached under the old ones no longer count."""
        self._users = dict(users)
        self._ok = set()
        self._in_flight = {}

    def close(self) -> None:
        """When the server stops: the bcrypt thread ends once its check in hand is done."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def enabled(self) -> bool:
        return bool(self._users)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._users or str(scope["path"]).startswith(OWN_AUTH_PREFIXES):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("-",))[0]
        verdict = await self.check(_authorization(scope), str(client))
        if verdict is True:
            await self.app(scope, receive, send)
            return
        if verdict is False:
            messages = plain(401, "unauthorized\n", {"WWW-Authenticate": f'Basic realm="{REALM}"'})
        else:
            messages = plain(429, "too many password checks; retry later\n", {"Retry-After": str(verdict)})
        for message in messages:
            await send(message)

    async def check(self, header: bytes, client: str = "-") -> bool | int:
        """True or False: whether an Authorization header value carries a valid user and password; an int: no
        check was made (too many), retry after that many seconds."""
        credentials = _basic_credentials(header)
        if credentials is None:
            return False
        user, password = credentials
        users = self._users
        token = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        if token in self._ok:
            return True
        shared = self._in_flight.get(token)
        if shared is None:
            wait = self._admit(client)
            if wait:
                self.throttled += 1
                return wait
            hashed = users.get(user.decode("utf-8", "replace"))
            shared = asyncio.get_running_loop().run_in_executor(self._pool, _verdict, password, hashed)
            self._in_flight[token] = shared
            self._queued += 1
            self.checks += 1
            shared.add_done_callback(partial(self._done, token))
        if not await asyncio.shield(shared):
            return False
        if users is self._users:  # not a check against users a reload has just replaced
            if len(self._ok) >= CACHE_MAX:
                self._ok.clear()
            self._ok.add(token)
        return True

    def _done(self, token: bytes, future: asyncio.Future[bool]) -> None:  # on the loop, when a check ends
        self._queued -= 1
        if self._in_flight.get(token) is future:
            del self._in_flight[token]

    def _admit(self, client: str) -> int:
        """0 when a new check may start for this client; else the seconds to wait."""
        if self._queued >= CHECKS_AT_ONCE + CHECKS_WAITING:
            return 1
        now = self.clock()
        client = client_network(client)
        allowance = self._clients.get(client)
        if allowance is None:
            allowance = self._clients[client] = Allowance(CLIENT_INTERVAL, CLIENT_BURST, now)
            if len(self._clients) > CLIENTS_TRACKED:
                self._clients.popitem(last=False)
        self._clients.move_to_end(client)
        return math.ceil(allowance.take(now))


def client_network(address: str) -> str:
    """The /24 of an IPv4 address (IPv4-mapped ones too), the /64 of an IPv6 one; anything else as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


def _verdict(password: bytes, hashed: bytes | None) -> bool:
    """In the bcrypt thread: an unknown user (hashed None) costs a check too, and always fails."""
    ok = _checkpw(password, hashed or _UNKNOWN_USER)
    return ok and hashed is not None


def _checkpw(password: bytes, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:
        return False


def _authorization(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return b""


def _basic_credentials(header: bytes) -> tuple[bytes, bytes] | None:
    scheme, _, encoded = header.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep and user else None
