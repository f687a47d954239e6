"""The webhook receiver: `POST /webhooks/openai`, signed by Standard Webhooks: terminal `response.*` events
and the Agents API's `agent.session.*` events.

The signature is checked over the raw bytes, in constant time, before anything parses the body. A verified
event goes to the daemon through the inbox (deduplicated by `webhook-id` there, against a persisted log kept
for 72 hours) and is answered once committed; fetching the response for its details happens after the
answer, as a by-id poll. Bodies and secrets are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from exporter.changeset import ChangeSet
from exporter.inbox import Delivery, Inbox, StoreUnavailable
from exporter.model import SOURCE_WEBHOOKS, RunSnapshot, thread_id_problem
from exporter.server import read_body
from exporter.sources.push import read_token_file

log = logging.getLogger(__name__)

TOLERANCE = 300  # seconds either side of now a webhook-timestamp may be
DELIVERY_WINDOW = 72 * 3600.0  # OpenAI retries a delivery for up to three days
MAX_DELIVERIES = 200_000  # webhook ids remembered at most; the oldest go first
MAX_BODY = 64 * 1024
COMMIT_TIMEOUT = 10.0
# Terminal event type -> the response status it reports.
EVENT_STATUS: dict[str, str] = {
    "response.completed": "completed",
    "response.failed": "failed",
    "response.cancelled": "cancelled",
    "response.incomplete": "incomplete",
}
# Session-level events of the Agents API (there are no turn events): each makes its session due at once.
SESSION_EVENTS: tuple[str, ...] = (
    "agent.session.created",
    "agent.session.in_progress",
    "agent.session.action_required",
    "agent.session.idle",
    "agent.session.failed",
)
# webhooks_total{type}: the response and session events, `other` for any other type (so the label is
# bounded whatever a sender invents), `unverified` before verification.
EVENT_TYPES: tuple[str, ...] = (*EVENT_STATUS, *SESSION_EVENTS, "other", "unverified")
OUTCOMES: tuple[str, ...] = ("accepted", "duplicate", "bad_signature", "stale", "malformed", "too_large",
                             "timeout")
# Refusals before the body is read whole: 413 and 408 (read_body), counted like the others.
_BODY_REFUSALS = {413: "too_large", 408: "timeout"}


class SecretError(ValueError):
    """A secret that cannot be used; the message never contains it."""


def parse_secret(secret: str) -> bytes:
    """A `whsec_` secret is base64 after the prefix; any other secret is its raw bytes (as the SDK does)."""
    if not secret:
        raise SecretError("empty")
    if secret.startswith("whsec_"):
        encoded = secret[6:] + "=" * (-len(secret[6:]) % 4)  # tolerate unpadded base64, as Standard Webhooks does
        try:
            key = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise SecretError("not valid base64 after whsec_") from None
        if not key:
            raise SecretError("empty after whsec_")
        return key
    return secret.encode("utf-8")


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` (without the `v1,` prefix)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: float) -> str | None:
    """Why a delivery is refused, or None when one of its signatures matches one of the keys."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signature = headers.get("webhook-signature")
    if not msg_id or not stamp or not signature:
        return "missing header"
    try:
        timestamp = int(stamp)
    except ValueError:
        return "bad timestamp"
    if timestamp < now - TOLERANCE:
        return "timestamp too old"
    if timestamp > now + TOLERANCE:
        return "timestamp in the future"
    given = [part[3:] if part.startswith("v1,") else part for part in signature.split()]
    expected = [sign(key, msg_id, timestamp, body) for key in keys]
    # Every pair is compared (no early exit), each in constant time.
    matches = [hmac.compare_digest(e.encode(), g.encode("utf-8", "replace")) for e in expected for g in given]
    return None if any(matches) else "no signature matches"


def parse_event(body: bytes) -> tuple[str, RunSnapshot | None] | None:
    """(type label, snapshot) of a verified body; None when it is not an event. A session event has no
    snapshot: `read_event` says which session."""
    delivery = read_event(body, "")
    return None if delivery is None else (delivery.event_type, delivery.run)


def read_event(body: bytes, delivery_id: str) -> Delivery | None:
    """A verified body as a delivery for the daemon; None when it is not a well-formed event."""
    try:
        event = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return None
    event_type = event["type"]
    status = EVENT_STATUS.get(event_type)
    if status is None and event_type not in SESSION_EVENTS:
        return Delivery(delivery_id, "other", None)
    data, at = event.get("data"), event.get("created_at")
    data_id = data.get("id") if isinstance(data, dict) else None
    if (not isinstance(data_id, str) or thread_id_problem(data_id) is not None
            or isinstance(at, bool) or not isinstance(at, int) or not 0 <= at < 2**53):
        return None
    if status is None:
        return Delivery(delivery_id, event_type, None, session=data_id, at=at)
    return Delivery(delivery_id, event_type, event_snapshot(data_id, status, at))


def event_snapshot(response_id: str, status: str, ended: int) -> RunSnapshot:
    """What a terminal event alone says. Its created_at is when the response ended; the creation time is not
    in the event, so no duration is observed for a response known only from its event."""
    return RunSnapshot(id=response_id, scope="", status=status, created_at=ended, source=SOURCE_WEBHOOKS,
                       completed_at=ended if status in ("completed", "incomplete") else None,
                       failed_at=ended if status == "failed" else None,
                       cancelled_at=ended if status == "cancelled" else None, created_known=False)


class DeliveryLog:
    """Webhook ids seen within the delivery window, bounded; and the terminal events whose response is
    being fetched for its details (`pending`). Changes are persisted with each commit."""

    def __init__(self, seen: Mapping[str, float] | None = None, window: float = DELIVERY_WINDOW,
                 limit: int = MAX_DELIVERIES, pending: Mapping[str, tuple[str, int]] | None = None) -> None:
        self.window = window
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict(sorted((seen or {}).items(), key=lambda kv: kv[1]))
        self._changes: dict[str, float | None] = {}
        self.pending: dict[str, tuple[str, int]] = dict(pending or {})  # response id -> (status, ended_at)
        self._pending_changes: dict[str, tuple[str, int] | None] = {}

    def hold(self, snap: RunSnapshot) -> None:
        """Keep what a terminal event said until the fetch of its response succeeds or fails."""
        ended = snap.ended_at()
        self.pending[snap.id] = self._pending_changes[snap.id] = (snap.status, ended or snap.created_at)

    def settle(self, response_id: str) -> RunSnapshot | None:
        """Forget the held event of a response; return it as a snapshot (for counting from it alone)."""
        held = self.pending.pop(response_id, None)
        if held is None:
            return None
        self._pending_changes[response_id] = None
        return event_snapshot(response_id, *held)

    def __contains__(self, delivery_id: object) -> bool:
        return delivery_id in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, delivery_id: str, now: float) -> None:
        self._seen[delivery_id] = now
        self._seen.move_to_end(delivery_id)
        self._changes[delivery_id] = now
        while len(self._seen) > self.limit:
            old, _ = self._seen.popitem(last=False)
            self._changes[old] = None

    def expire(self, now: float) -> None:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if at > now - self.window:
                return
            del self._seen[oldest]
            self._changes[oldest] = None

    def take_changes(self) -> ChangeSet:
        """Deliveries and held events to write (None: forgotten)."""
        changes = ChangeSet(deliveries=self._changes, pending=self._pending_changes)
        self._changes, self._pending_changes = {}, {}
        return changes


class WebhookSecrets:
    """The signing keys in force: from a file, one secret a line, so a rotation can keep the old one."""

    def __init__(self, secrets: Sequence[str], path: Path | None = None) -> None:
        self.keys = [parse_secret(s) for s in secrets]
        self.path = path

    def reload(self) -> None:
        """Re-read the file (SIGHUP); on any problem keep the secrets in force and say so, never a secret."""
        if self.path is None:
            return
        try:
            keys = [parse_secret(line) for line in read_token_file(self.path)]
        except (OSError, UnicodeDecodeError, SecretError) as exc:
            log.warning("cannot re-read webhook secret file %s (%s); keeping the secrets in force", self.path,
                        type(exc).__name__)
            return
        if keys:
            self.keys = keys


class WebhookReceiver:
    name = SOURCE_WEBHOOKS

    def __init__(self, inbox: Inbox, secrets: WebhookSecrets, *, clock: Callable[[], float],
                 on_result: Callable[[str, str], None], commit_timeout: float = COMMIT_TIMEOUT) -> None:
        self.inbox = inbox
        self.secrets = secrets
        self.clock = clock
        self.on_result = on_result  # (type, outcome) for refusals the daemon never sees
        self.commit_timeout = commit_timeout

    def routes(self) -> list[BaseRoute]:
        return [Route("/webhooks/openai", self.post, methods=["POST"])]

    async def post(self, request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY)
        except HTTPException as exc:
            self.on_result("unverified", _BODY_REFUSALS.get(exc.status_code, "malformed"))
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        problem = verify(self.secrets.keys, request.headers, body, self.clock())
        if problem is not None:
            self.on_result("unverified", "bad_signature")
            log.warning("webhook delivery refused: %s", problem)  # the reason only: never the body
            return JSONResponse({"error": "invalid signature"}, status_code=400)
        delivery = read_event(body, request.headers["webhook-id"][:256])
        if delivery is None:
            self.on_result("unverified", "malformed")
            return JSONResponse({"error": "not a webhook event"}, status_code=400)
        try:
            done = await self.inbox.submit(delivery, self.commit_timeout)
        except StoreUnavailable:
            return JSONResponse({"error": "the state file cannot be written right now; retry"}, status_code=503,
                                headers={"Retry-After": "1"})
        assert isinstance(done, Delivery)
        return JSONResponse({"outcome": done.outcome})
