"""One recipient's webhook call never fails its neighbours (issue 25, finding 1), end to end on real Redis and
PostgreSQL with a real sink: a user id outside ASCII gets a header-safe, unique ``webhook-id`` that the
Standard Webhooks signature still covers, and an unforeseen error in one call is that recipient's failed
attempt alone (retried, then dead-lettered), never poison for the entry that carries the others."""

from __future__ import annotations

import secrets

import pytest
from harness import PlatformFactory
from sinkserver import Sink

from notiflow.config import Settings
from notiflow.models import DeliveryWork
from notiflow.webhook import WebhookClient

pytestmark = pytest.mark.timeout(90)

#: Ids that are valid (SPEC §2) but not plain ASCII, or that look like the encoding of another one.
ODD_IDS = ["josé", "jos%C3%A9", "名前", "zoë 🙂", "100%", "a b", "ümlaut:x"]


def users(n: int) -> list[str]:
    return [f"r{i}-{secrets.token_hex(3)}" for i in range(n)]


async def test_a_non_ascii_recipient_gets_its_webhook_and_poisons_nobody(
    platform: PlatformFactory, sink: Sink
) -> None:
    plat = await platform()
    tag = f"odd-{secrets.token_hex(3)}"
    recipients = [*users(41 - len(ODD_IDS)), *ODD_IDS]  # 41, as in the report: one stream entry
    nid = await plat.notify(user_ids=recipients, webhook_url=sink.url("ok", tag))

    await plat.wait_webhook(nid, recipients, "succeeded", timeout_s=30)
    calls = sink.per_delivery(tag)
    assert len(calls) == len(recipients), "two deliveries shared a webhook-id, or one was not called"
    assert all(len(hits) == 1 for hits in calls.values()), {k: len(v) for k, v in calls.items() if len(v) != 1}
    hits = [h for hs in calls.values() for h in hs]
    assert sorted(h.body["user_id"] for h in hits) == sorted(recipients)
    assert all(h.signature_ok for h in hits), "the sink could not verify a signature"
    for h in hits:
        assert h.webhook_id is not None and h.webhook_id.isascii() and h.webhook_id.isprintable(), h.webhook_id
        assert " " not in h.webhook_id and h.webhook_id.startswith(f"{nid}:"), h.webhook_id
    assert await plat.dlq(nid) == []
    assert await plat.db.fetchval("SELECT count(*) FROM poison_entries") == 0


class OneRecipientExplodes(WebhookClient):
    """The production client, but one recipient's call raises what no handler foresaw."""

    victim = "boom"

    async def send(self, work: DeliveryWork) -> None:
        if work.user_id == self.victim:
            raise RuntimeError("injected: not a NotiflowError")
        await super().send(work)


async def test_an_unforeseen_error_in_one_call_is_that_recipients_failure_alone(
    platform: PlatformFactory, sink: Sink
) -> None:
    plat = await platform(stream_workers=0)

    def faulty(settings: Settings) -> WebhookClient:
        return OneRecipientExplodes(settings)

    await plat.start_stream_worker(webhooks=faulty)
    tag = f"boom-{secrets.token_hex(3)}"
    others = users(5)
    nid = await plat.notify(user_ids=[*others, OneRecipientExplodes.victim], webhook_url=sink.url("ok", tag))

    await plat.wait_webhook(nid, others, "succeeded", timeout_s=30)
    await plat.wait_webhook(nid, [OneRecipientExplodes.victim], "dead", timeout_s=30)
    assert sorted(h.body["user_id"] for h in sink.hits(tag)) == sorted(others), "called twice, or not at all"
    (entry,) = await plat.dlq(nid)
    retries = plat.settings.max_retries
    assert (entry["user_id"], entry["channel"], entry["reason"], entry["attempts"]) == (
        OneRecipientExplodes.victim, "webhook", "max_retries_exceeded", retries + 1
    )
    assert "RuntimeError: injected" in entry["last_error"]
    rows = await plat.attempts(nid, OneRecipientExplodes.victim)
    assert [r["outcome"] for r in rows] == ["failed"] * (retries + 1)
    assert await plat.db.fetchval("SELECT count(*) FROM poison_entries") == 0
