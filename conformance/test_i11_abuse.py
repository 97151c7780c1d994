"""I11 security, part 3: what one producer can do to other deliveries and to the platform's capacity, black-box
(issue 25).

- A notification whose recipients include user ids outside ASCII (``josé``) reaches every recipient's webhook
  once, signed so that the Standard Webhooks reference library verifies it; none of them is dead-lettered. (A
  ``webhook-id`` header built from the raw id made the whole stream entry poison: 41 recipients dead, some of
  them called already.)
- The ingest rate limit counts deliveries (recipients summed over a request's notifications): a request that
  costs more than the whole burst is refused with 413 ``over_ingest_burst`` naming the limit, whether it is a
  batch of 1,000 notifications or one notification to 10,000 users; small requests pass; a notification to
  three users takes three tokens. Proven on a dedicated cluster with a burst of 3.
- Idempotency keys belong to the producer (API key) that used them: when one producer's key ages out and is
  forgotten, another producer's live key of the same name still answers its repeats. Proven on a dedicated cluster
  with a 12 s ``IDEMPOTENCY_WINDOW_S``.

The first check needs the suite's sink to hold the cluster's webhook secret (a cluster the suite started).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conformance.client import until
from conformance.cluster import Target
from conformance.sink import WebhookSink

pytestmark = pytest.mark.timeout(120)

#: Valid user ids (SPEC §2) outside plain ASCII, or spelled like the percent-encoding of another one.
ODD = ["josé", "jos%C3%A9", "名前", "zoë 🙂", "100%", "a b", "ümlaut:x"]


async def test_a_non_ascii_recipient_gets_its_webhook_and_poisons_nobody(
    target: Target, http: httpx.AsyncClient, run_id: str, sink: WebhookSink
) -> None:
    target.require_control("the suite's sink must share the cluster's webhook secret")
    tag = secrets.token_hex(4)
    recipients = [f"{run_id}-w{i}" for i in range(41 - len(ODD))] + [f"{run_id}-{odd}" for odd in ODD]
    resp = await http.post(f"{target.urls[0]}/notifications", json={
        "user_ids": recipients, "event": "abuse.odd-ids", "payload": {"n": 1}, "webhook_url": sink.url("ok", tag),
    })
    assert resp.status_code == 202, resp.text
    nid = resp.json()["id"]
    statuses: dict[str, str] = {}

    async def all_succeeded() -> bool:
        got = await http.get(f"{target.urls[0]}/notifications/{nid}", params={"limit": 100})
        statuses.update({d["user_id"]: d["webhook_status"] for d in got.json()["deliveries"]})
        return len(statuses) == len(recipients) and set(statuses.values()) == {"succeeded"}

    assert await until(all_succeeded, 30), f"webhooks not all succeeded: {statuses}"
    calls = sink.calls("ok", tag)
    assert sorted(c.body["user_id"] for c in calls) == sorted(recipients), "a recipient was called twice, or never"
    assert all(c.signature_ok for c in calls), "a call did not verify with standardwebhooks"
    for user in (recipients[0], f"{run_id}-josé"):
        dlq = await http.get(f"{target.urls[0]}/dlq", params={"user_id": user})
        assert dlq.status_code == 200 and dlq.json()["entries"] == [], dlq.text


# --- the ingest rate limit, on a dedicated cluster with a burst of 3 -------------------------------------------


@pytest.fixture(scope="module")
def limited(start_cluster: Callable[..., Target]) -> Iterator[Target]:
    # One token per 100 s: within a test nothing refills, so what a request took is exact.
    target = start_cluster(
        "a small ingest rate limit", gateways=1, stream_workers=1, retry_workers=0,
        env={"NOTIFLOW_INGEST_RATE_PER_S": "0.01", "NOTIFLOW_INGEST_BURST": "3"},
    )  # fmt: skip
    yield target
    target.stop()


def _one(user: str | list[str]) -> dict[str, Any]:
    who = {"user_ids": user} if isinstance(user, list) else {"user_id": user}
    return {**who, "event": "abuse.rate", "payload": {}}


async def test_a_request_over_the_burst_is_refused_with_a_413_naming_the_limit(
    limited: Target, http: httpx.AsyncClient, run_id: str
) -> None:
    url = limited.urls[0]
    many = [f"{run_id}-m{i}" for i in range(10_000)]
    for path, body, cost in [
        ("/notifications/batch", {"notifications": [_one(u) for u in many[:1000]]}, 1000),
        ("/notifications", _one(many), 10_000),
    ]:
        resp = await http.post(f"{url}{path}", json=body)
        assert resp.status_code == 413, f"{path}: {resp.status_code} {resp.text[:300]}"
        error = resp.json()["error"]
        assert error["code"] == "over_ingest_burst" and "NOTIFLOW_INGEST_BURST" in error["message"], error
        assert error["details"]["deliveries"] == cost, error
    # Refused before anything was taken: the whole burst is still there for a request that fits.
    fits = await http.post(f"{url}/notifications", json=_one([f"{run_id}-a", f"{run_id}-b", f"{run_id}-c"]))
    assert fits.status_code == 202, fits.text
    # Three recipients took three tokens: the next single notification is over the rate.
    over = await http.post(f"{url}/notifications", json=_one(f"{run_id}-d"))
    assert over.status_code == 429 and over.json()["error"]["code"] == "rate_limited", over.text
    assert int(over.headers["retry-after"]) >= 1
    offline = await http.get(f"{url}/notifications/offline/{run_id}-d")
    assert offline.json()["notifications"] == [], "a refused notification was stored"


# --- idempotency keys belong to their producer, on a dedicated cluster with a short key window -------------------

#: The dedicated cluster's IDEMPOTENCY_WINDOW_S: short enough to watch a key age out, long enough that producer
#: B's key, used half a window after A's, is still live when A's is forgotten.
WINDOW_S = 12


@pytest.fixture(scope="module")
def two_producers(start_cluster: Callable[..., Target]) -> Iterator[tuple[Target, str, str]]:
    a, b = (f"conf-producer-{secrets.token_urlsafe(24)}" for _ in range(2))
    target = start_cluster(
        "a short idempotency window and two producers' keys", gateways=1, stream_workers=1, retry_workers=1,
        env={"NOTIFLOW_API_KEYS": f"{a},{b}", "NOTIFLOW_IDEMPOTENCY_WINDOW_S": str(WINDOW_S)},
    )  # fmt: skip
    yield target, a, b
    target.stop()


async def test_forgetting_one_producers_aged_key_keeps_another_producers_live_key(
    two_producers: tuple[Target, str, str], http: httpx.AsyncClient, run_id: str
) -> None:
    """Producers A and B both use ``Idempotency-Key: order-42``, B half a window after A. Once A's key has aged
    out, A may use it again, and B's, younger, must still answer B's repeat with B's first response (I5). (A
    cleanup once deleted every row with that key name, so B's repeat created a second notification; aged keys now
    go with their day partitions, and an aged key stops holding when its window ends, cleaned or not.)"""
    target, key_a, key_b = two_producers
    url = target.urls[0]
    body = _one(f"{run_id}-order")

    async def send(api_key: str) -> str:
        resp = await http.post(f"{url}/notifications", json=body,
                               headers={"Authorization": f"Bearer {api_key}", "Idempotency-Key": "order-42"})
        assert resp.status_code == 202, resp.text
        return str(resp.json()["id"])

    first_a = await send(key_a)
    await asyncio.sleep(WINDOW_S / 2)  # the condition is time itself: B's key is to be half a window younger
    first_b = await send(key_b)
    assert first_b != first_a, "two producers' keys collided"
    assert await send(key_a) == first_a, "A's key stopped holding within its window"
    await asyncio.sleep(WINDOW_S / 2 + 1)  # time itself again: A's key is past its window, B's is not
    assert await send(key_b) == first_b, "B's live key was forgotten with A's: B's repeat created a second notification"
    assert await send(key_a) != first_a, "A's forgotten key still answered A's first response"
