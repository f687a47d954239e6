"""The webhook receiver: Standard Webhooks verification against an independent signer (the
`standardwebhooks` package), refusals counted as bad_signature before any parsing, rotation, and the
persisted, bounded delivery log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette

from exporter.inbox import Delivery, Inbox, resolve
from exporter.sources.webhooks import (
    DeliveryLog,
    SecretError,
    WebhookReceiver,
    WebhookSecrets,
    parse_secret,
    verify,
)

NOW = 1_790_000_000
SECRET = "whsec_" + base64.b64encode(b"receiver-test-secret-0123456789ab").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"the-secret-before-the-rotation!!").decode()
EVENT = {"id": "evt_1", "object": "event", "type": "response.failed", "created_at": NOW - 10,
         "data": {"id": "resp_abc"}}


def _signed(body: str, secret: str = SECRET, msg_id: str = "msg_1", at: int = NOW) -> dict[str, str]:
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(at, tz=UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(at), "webhook-signature": signature,
            "content-type": "application/json"}


async def _post(secrets: list[str], body: str | bytes, headers: dict[str, str]
                ) -> tuple[httpx.Response, Counter[tuple[str, str]], list[Delivery]]:
    """POST to a receiver whose inbox a stand-in daemon drains and commits at once."""
    inbox = Inbox()
    results: Counter[tuple[str, str]] = Counter()
    received: list[Delivery] = []
    receiver = WebhookReceiver(inbox, WebhookSecrets(secrets), clock=lambda: float(NOW),
                               on_result=lambda t, o: results.update([(t, o)]))

    async def daemon() -> None:
        while True:
            pending = inbox.drain()
            for p in pending:
                assert isinstance(p.item, Delivery)
                received.append(p.item)
            resolve(pending)
            await asyncio.sleep(0)

    task = asyncio.create_task(daemon())
    app = Starlette(routes=receiver.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        response = await client.post("/webhooks/openai", content=body, headers=headers)
    task.cancel()
    return response, results, received


def test_an_event_signed_by_the_standardwebhooks_package_is_accepted() -> None:
    body = json.dumps(EVENT)
    response, results, received = asyncio.run(_post([SECRET], body, _signed(body)))
    assert response.status_code == 200
    assert not results  # the daemon counts accepted ones, after dedupe
    [delivery] = received
    assert delivery.delivery_id == "msg_1" and delivery.event_type == "response.failed"
    assert delivery.run is not None and delivery.run.id == "resp_abc" and delivery.run.status == "failed"
    assert delivery.run.failed_at == NOW - 10  # the event's created_at is the end time


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "stale", "future", "no_id", "no_timestamp",
                                  "no_signature"])
def test_refused_deliveries_change_nothing_but_bad_signature(case: str, caplog: pytest.LogCaptureFixture) -> None:
    body = json.dumps(EVENT)
    headers = _signed(body, secret=OLD_SECRET if case == "wrong_secret" else SECRET,
                      at={"stale": NOW - 301, "future": NOW + 301}.get(case, NOW))
    if case == "tampered":
        body = body.replace("response.failed", "response.completed")
    if case.startswith("no_"):
        del headers["webhook-" + case[3:]]
    with caplog.at_level(logging.DEBUG):
        response, results, received = asyncio.run(_post([SECRET], body, headers))
    assert response.status_code == 400
    assert received == []
    assert results == Counter({("unverified", "bad_signature"): 1})
    logged = caplog.text
    assert "resp_abc" not in logged and SECRET[6:] not in logged
    assert "webhook-signature" not in headers or headers["webhook-signature"] not in logged


def test_the_edges_of_the_timestamp_window_pass() -> None:
    body = json.dumps(EVENT)
    for at in (NOW - 300, NOW + 300):
        response, _, received = asyncio.run(_post([SECRET], body, _signed(body, at=at)))
        assert response.status_code == 200 and len(received) == 1


def test_during_a_rotation_both_secrets_verify_and_raw_secrets_are_bytes() -> None:
    body = json.dumps(EVENT)
    for secret in (OLD_SECRET, SECRET):
        response, _, _ = asyncio.run(_post([SECRET, OLD_SECRET], body, _signed(body, secret=secret)))
        assert response.status_code == 200
    raw = "plain-text-secret"
    headers = _signed(body, secret="whsec_" + base64.b64encode(raw.encode()).decode())
    assert verify([parse_secret(raw)], headers, body.encode(), NOW) is None
    # several signatures in one header: any match passes
    headers["webhook-signature"] = "v1,bm90LXRoaXMtb25l " + headers["webhook-signature"]
    assert verify([parse_secret(raw)], headers, body.encode(), NOW) is None


def test_signed_but_malformed_bodies_and_other_event_types() -> None:
    for body, status, expected in (("not json", 400, ("unverified", "malformed")),
                                   (json.dumps({**EVENT, "data": {"id": "a b"}}), 400, ("unverified", "malformed")),
                                   (json.dumps({**EVENT, "created_at": "later"}), 400, ("unverified", "malformed"))):
        response, results, received = asyncio.run(_post([SECRET], body, _signed(body)))
        assert response.status_code == status and results == Counter([expected]) and not received
    body = json.dumps({**EVENT, "type": "batch.completed"})
    response, results, received = asyncio.run(_post([SECRET], body, _signed(body)))
    assert response.status_code == 200 and received[0].event_type == "other" and received[0].run is None


def test_secrets_that_cannot_be_used_are_refused_without_echoing_them() -> None:
    for bad in ("", "whsec_", "whsec_***not base64***"):
        with pytest.raises(SecretError) as err:
            parse_secret(bad)
        assert not bad[6:] or bad[6:] not in str(err.value)


def test_the_delivery_log_expires_after_the_window_and_is_bounded() -> None:
    log = DeliveryLog({"old": 0.0, "new": 100.0}, window=50.0, limit=3)
    log.expire(60.0)
    assert "old" not in log and "new" in log
    for i in range(4):
        log.add(f"m{i}", 120.0 + i)
    assert len(log) == 3 and "new" not in log and "m0" not in log and "m3" in log
    changes = log.take_changes().deliveries
    assert changes["old"] is None and changes["new"] is None and changes["m3"] == 123.0


def test_webhook_secrets_are_reread_and_a_bad_file_keeps_them(tmp_path: Path) -> None:
    """SIGHUP re-reads --webhook-secret-file: a rotation adds the new secret; a broken file changes nothing."""
    path = tmp_path / "secrets"
    first, second = "whsec_" + base64.b64encode(b"first-secret-0123").decode(), "raw-second-secret"
    path.write_text(first + "\n")
    secrets = WebhookSecrets([first], path)
    path.write_text(f"{first}\n{second}\n")
    secrets.reload()
    assert secrets.keys == [b"first-secret-0123", b"raw-second-secret"]
    path.write_text("whsec_!!!not-base64\n")
    secrets.reload()
    assert len(secrets.keys) == 2
    path.unlink()
    secrets.reload()
    assert len(secrets.keys) == 2


def test_a_body_over_the_cap_is_413_and_counted() -> None:
    """Regression (issue 16): webhook 413s were not counted in assistants_exporter_webhooks_total."""
    body = json.dumps({**EVENT, "padding": "x" * (64 * 1024)})
    response, results, received = asyncio.run(_post([SECRET], body, _signed(body)))
    assert response.status_code == 413 and response.headers["connection"] == "close"
    assert received == []
    assert results == Counter({("unverified", "too_large"): 1})
