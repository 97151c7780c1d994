"""Delivery receipts (issue 23) end to end on real Redis and PostgreSQL: a notification with a status_url gets a
signed ``delivery.delivered`` / ``delivery.dead`` / ``delivery.expired`` event per terminal delivery and channel;
a failing status_url is retried, then given up, and never changes the delivery; a notification without one
writes no outbox row.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import pytest
from harness import Platform, PlatformFactory
from helpers import wait_for
from sinkserver import Hit, Sink

from notiflow import metrics
from notiflow.models import Outcome
from notiflow.store import deliveries as deliveries_sql

pytestmark = pytest.mark.timeout(60)


def users(n: int) -> list[str]:
    return [f"r{i}-{secrets.token_hex(3)}" for i in range(n)]


def events(hits: list[Hit]) -> list[dict[str, Any]]:
    """Every event the sink received, in arrival order (a retried batch's events once per request)."""
    return [e for h in hits if isinstance(h.body, dict) for e in h.body.get("events", [])]


async def received(sink: Sink, tag: str, count: int, timeout_s: float = 20) -> list[dict[str, Any]]:
    """Wait until ``count`` distinct events reached ``/…/tag`` with a 200; those events."""

    def done() -> list[dict[str, Any]]:
        ok = [h for h in sink.hits(tag) if h.status == 200]
        got = {e["id"]: e for e in events(ok)}
        assert len(got) >= count, got
        return list(got.values())

    result: list[dict[str, Any]] = await wait_for(done, timeout_s, interval_s=0.05)
    return result


def receipts_counted(result: str) -> float:
    return metrics.REGISTRY.get_sample_value("notiflow_receipts_total", {"result": result}) or 0.0


async def ack(plat: Platform, user: str, nid: uuid.UUID) -> None:
    resp = await plat.http.post(f"/notifications/offline/{user}/ack", json={"ids": [str(nid)]})
    assert resp.status_code == 200, resp.text


async def outbox_rows(plat: Platform, nid: uuid.UUID) -> int:
    return int(await plat.db.fetchval("SELECT count(*) FROM receipt_outbox WHERE notification_id = $1", nid))


async def wait_status(plat: Platform, nid: uuid.UUID, user: str, status: str) -> None:
    async def reached() -> bool:
        assert (await plat.delivery(nid, user))["status"] == status
        return True

    await wait_for(reached, 20, interval_s=0.05)


async def test_ack_sends_a_signed_delivered_receipt(platform: PlatformFactory, sink: Sink) -> None:
    plat = await platform()
    tag, (user,) = "acked", users(1)
    nid = await plat.notify(user_id=user, status_url=sink.url("ok", tag))
    await wait_status(plat, nid, user, "offline")  # no socket: handed off to the offline queue
    await ack(plat, user, nid)

    (event,) = await received(sink, tag, 1)
    assert event["type"] == "delivery.delivered"
    assert event["data"] == {
        "notification_id": str(nid), "user_id": user, "seq": (await plat.delivery(nid, user))["seq"],
        "channel": "socket", "status": "delivered",
    }
    assert event["timestamp"]
    hit = sink.hits(tag)[0]
    assert hit.signature_ok and hit.webhook_id and hit.webhook_id.startswith("rcpt_")
    assert await _outbox_drained(plat, nid)


async def _outbox_drained(plat: Platform, nid: uuid.UUID) -> bool:
    async def empty() -> bool:
        assert await outbox_rows(plat, nid) == 0
        return True

    result: bool = await wait_for(empty, 10, interval_s=0.05)
    return result


async def test_a_replaced_delivery_sends_a_replaced_receipt(platform: PlatformFactory, sink: Sink) -> None:
    """Collapse keys (migration 011): replaced is terminal, so a notification that asked for receipts hears of it."""
    plat = await platform()
    tag, (user,) = "replaced", users(1)
    older = await plat.notify(user_id=user, collapse_key="score", status_url=sink.url("ok", tag))
    await plat.notify(user_id=user, collapse_key="score")  # no status_url: it sends nothing itself
    assert (await plat.delivery(older, user))["status"] == "replaced"

    (event,) = await received(sink, tag, 1)
    assert event["type"] == "delivery.replaced"
    assert event["data"] == {
        "notification_id": str(older), "user_id": user, "seq": (await plat.delivery(older, user))["seq"],
        "channel": "socket", "status": "replaced",
    }
    assert await _outbox_drained(plat, older)


async def test_dead_webhook_sends_a_dead_receipt_and_success_a_delivered_one(
    platform: PlatformFactory, sink: Sink
) -> None:
    plat = await platform()
    tag, (dead_user,), (ok_user,) = "hookdead", users(1), users(1)
    dead = await plat.notify(user_id=dead_user, webhook_url=sink.url("reject", "hd"), status_url=sink.url("ok", tag))
    fine = await plat.notify(user_id=ok_user, webhook_url=sink.url("ok", "hk"), status_url=sink.url("ok", tag))
    await plat.wait_webhook(dead, [dead_user], "dead")

    got = await received(sink, tag, 2)
    by_nid = {e["data"]["notification_id"]: e for e in got}
    assert by_nid[str(dead)]["type"] == "delivery.dead"
    assert by_nid[str(dead)]["data"]["channel"] == "webhook"
    assert by_nid[str(fine)]["type"] == "delivery.delivered"
    assert by_nid[str(fine)]["data"]["channel"] == "webhook"
    # The socket channels are still open (offline, unacknowledged): no event for them.
    assert all(e["data"]["channel"] == "webhook" for e in got)


async def test_socket_dead_outcome_writes_a_dead_receipt_row(platform: PlatformFactory, sink: Sink) -> None:
    # The socket channel dies only through outages that outlast every retry; its outcome statement is the one
    # that writes the row, tested here directly (the sender is stopped so that the row stays to be read).
    plat = await platform(retry_workers=0)
    (user,) = users(1)
    nid = await plat.notify(user_id=user, status_url=sink.url("ok", "sockdead"))
    await plat.db.execute(
        "UPDATE deliveries SET status = 'retrying' WHERE notification_id = $1 AND user_id = $2", nid, user
    )
    now = await plat.db.fetchval("SELECT now()")
    dead = Outcome(nid, user, "socket", 4, "failed", "dead", "test", now, now, error="gone",
                   dlq_reason="max_retries_exceeded")
    async with plat.db.acquire() as conn:
        await deliveries_sql.record_outcomes(conn, [dead], "test")
    rows = await plat.db.fetch("SELECT channel, kind, seq FROM receipt_outbox WHERE notification_id = $1", nid)
    assert [(r["channel"], r["kind"]) for r in rows] == [("socket", "dead")]


async def test_expiry_sends_an_expired_receipt(platform: PlatformFactory, sink: Sink) -> None:
    plat = await platform()
    tag, (user,) = "expired", users(1)
    nid = await plat.notify(user_id=user, ttl_seconds=1, status_url=sink.url("ok", tag))

    (event,) = await received(sink, tag, 1)  # the reconciler's expiry sweep: 1 s ttl, 2 s behind now
    assert event["type"] == "delivery.expired"
    assert event["data"]["notification_id"] == str(nid) and event["data"]["channel"] == "socket"
    assert (await plat.delivery(nid, user))["status"] == "expired"


async def test_failing_status_url_is_retried_then_succeeds(platform: PlatformFactory, sink: Sink) -> None:
    plat = await platform(receipt_poll_ms=20)
    tag, (user,) = "flakyr", users(1)
    nid = await plat.notify(user_id=user, status_url=sink.url("flaky", 2, tag))
    await wait_status(plat, nid, user, "offline")
    await ack(plat, user, nid)

    (event,) = await received(sink, tag, 1)
    assert event["type"] == "delivery.delivered"
    hits = sink.hits(tag)
    assert [h.status for h in hits] == [500, 500, 200]
    assert len({h.webhook_id for h in hits}) == 1  # the same message, retried
    assert all(h.signature_ok for h in hits)
    assert await _outbox_drained(plat, nid)


@pytest.mark.parametrize("kind", ["dead", "reject"])
async def test_status_url_that_always_fails_is_dropped_and_never_touches_the_delivery(
    platform: PlatformFactory, sink: Sink, kind: str
) -> None:
    plat = await platform(receipt_poll_ms=20)
    tag, (user,) = f"never{kind}", users(1)
    nid = await plat.notify(user_id=user, status_url=sink.url(kind, tag))
    await wait_status(plat, nid, user, "offline")
    before = receipts_counted("dropped")
    await ack(plat, user, nid)

    assert await _outbox_drained(plat, nid)  # given up
    # /dead answers 500: the first attempt and MAX_RETRIES (3) retries; /reject 400: refused for good at once.
    assert len(sink.hits(tag)) == (4 if kind == "dead" else 1)
    assert receipts_counted("dropped") == before + 1
    row = await plat.delivery(nid, user)
    assert row["status"] == "delivered" and row["delivered_at"] is not None
    assert not await plat.dlq(nid)


async def test_retries_to_one_host_wait_within_its_budget_without_using_an_attempt(
    platform: PlatformFactory, sink: Sink
) -> None:
    """Four status_urls on one host, each failing twice, with a budget of one retry per second to the host: the
    retries over the budget are held (counted, no attempt used), and every receipt still arrives within
    MAX_RETRIES = 2. A held batch that used an attempt would fail its second retry's turn and be dropped."""
    plat = await platform(receipt_poll_ms=20, webhook_retry_rate_per_host=1, max_retries=2)
    people = users(4)
    tags = [f"budgetr{i}-{secrets.token_hex(2)}" for i in range(len(people))]
    held, dropped = receipts_counted("held"), receipts_counted("dropped")
    nids = [await plat.notify(user_id=u, status_url=sink.url("flaky", 2, t)) for u, t in zip(people, tags, strict=True)]
    for nid, user in zip(nids, people, strict=True):
        await wait_status(plat, nid, user, "offline")
        await ack(plat, user, nid)

    for tag in tags:
        (event,) = await received(sink, tag, 1, timeout_s=40)
        assert event["type"] == "delivery.delivered"
        assert [h.status for h in sink.hits(tag)] == [500, 500, 200]  # two failures, then the retry that took
    assert receipts_counted("held") > held, "four retries in one second to one host: some were over the budget"
    assert receipts_counted("dropped") == dropped


async def test_no_status_url_writes_no_outbox_row(platform: PlatformFactory, sink: Sink) -> None:
    plat = await platform()
    (user,) = users(1)
    nid = await plat.notify(user_id=user, webhook_url=sink.url("reject", "norcpt"))
    await wait_status(plat, nid, user, "offline")
    await plat.wait_webhook(nid, [user], "dead")
    await ack(plat, user, nid)
    row = await plat.delivery(nid, user)
    assert row["status"] == "delivered" and row["receipt"] is None
    assert await plat.db.fetchval("SELECT status_url FROM notifications WHERE id = $1", nid) is None
    assert await outbox_rows(plat, nid) == 0


@pytest.mark.parametrize(
    ("url", "code"),
    [("http://elsewhere.example/r", "status_host_not_allowed"), ("ftp://x/r", "invalid_status_url")],
)
async def test_status_url_follows_the_webhook_host_rules(
    platform: PlatformFactory, sink: Sink, url: str, code: str
) -> None:
    plat = await platform(stream_workers=0, retry_workers=0)
    resp = await plat.http.post("/notifications", json={"user_id": "u", "event": "e", "status_url": url})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == code
