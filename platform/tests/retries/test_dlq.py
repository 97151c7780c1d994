"""Operating the DLQ: replay (delivered once, a second replay creates nothing), listing with keyset
pagination and filters, delete, and the same through `notiflow dlq list|replay|purge`."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import uuid
from typing import Any

import orjson
import pytest
from harness import Platform, PlatformFactory
from helpers import wait_for
from sinkserver import Sink

from notiflow.devstack import settings_env

pytestmark = pytest.mark.timeout(60)


async def dead_lettered(plat: Platform, nid: uuid.UUID, users: list[str]) -> list[dict[str, Any]]:
    await plat.wait_webhook(nid, users, "dead")
    rows = [dict(r) for r in await plat.dlq(nid)]
    assert len(rows) == len(users)
    return rows


async def test_a_replayed_entry_is_delivered_once_and_a_second_replay_creates_nothing(
    platform: PlatformFactory, sink: Sink
) -> None:
    plat = await platform(max_retries=1)
    user, tag = f"r-{secrets.token_hex(3)}", "replay"
    nid = await plat.notify(user_id=user, webhook_url=sink.url("switch", tag))
    (entry,) = await dead_lettered(plat, nid, [user])
    assert len(sink.hits(tag)) == 2

    sink.switch[tag] = 200  # the downstream is repaired
    first = await plat.http.post(f"/dlq/{entry['id']}/replay")
    second = await plat.http.post(f"/dlq/{entry['id']}/replay")
    assert (first.status_code, first.json()) == (202, {"id": entry["id"], "replayed": True})
    assert (second.status_code, second.json()) == (202, {"id": entry["id"], "replayed": False})

    await plat.wait_webhook(nid, [user], "succeeded")
    row = await plat.delivery(nid, user)
    assert row["webhook_attempts"] == 1  # attempts were reset by the replay
    listed = (await plat.http.get("/dlq", params={"user_id": user})).json()
    assert listed == {"entries": [], "next_after": None}
    await asyncio.sleep(0.5)  # a quiet period: a duplicate replay would show up as a fourth call
    assert [h.status for h in sink.hits(tag)] == [500, 500, 200]
    assert [(r["attempt"], r["outcome"]) for r in await plat.attempts(nid, user)] == [
        (1, "failed"), (2, "failed"), (1, "succeeded")
    ]


async def test_a_replay_that_fails_again_is_dead_lettered_once_more_in_the_same_row(
    platform: PlatformFactory, sink: Sink
) -> None:
    plat = await platform(max_retries=1)
    user = f"r-{secrets.token_hex(3)}"
    nid = await plat.notify(user_id=user, webhook_url=sink.url("dead", "replay-dead"))
    (entry,) = await dead_lettered(plat, nid, [user])

    assert (await plat.http.post(f"/dlq/{entry['id']}/replay")).status_code == 202

    async def dead_again() -> list[Any]:
        rows = await plat.dlq(nid)
        assert len(rows) == 1 and rows[0]["replayed_at"] is None, rows
        return rows

    (again,) = await wait_for(dead_again, 10)
    assert again["id"] == entry["id"] and again["attempts"] == 2
    assert len(sink.hits("replay-dead")) == 4
    listed = (await plat.http.get("/dlq", params={"user_id": user})).json()["entries"]
    assert [e["id"] for e in listed] == [entry["id"]]


async def test_listing_paginates_by_keyset_and_filters_by_user_and_event(
    platform: PlatformFactory, sink: Sink
) -> None:
    plat = await platform()
    tag = secrets.token_hex(3)
    alice, bob, carol = (f"{n}-{tag}" for n in ("alice", "bob", "carol"))
    url = sink.url("reject", "listing")
    shipped = await plat.notify(user_ids=[alice, bob, carol], event="order.shipped", webhook_url=url)
    paid = await plat.notify(user_ids=[alice, bob], event="order.paid", webhook_url=url)
    await dead_lettered(plat, shipped, [alice, bob, carol])
    await dead_lettered(plat, paid, [alice, bob])

    async def pages(**params: Any) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        after = 0
        for _ in range(10):
            body = (await plat.http.get("/dlq", params={"limit": 2, "after": after, **params})).json()
            assert len(body["entries"]) <= 2
            seen += body["entries"]
            if body["next_after"] is None:
                return seen
            after = body["next_after"]
            assert after == body["entries"][-1]["id"]
        raise AssertionError("pagination did not end")

    everything = await pages()
    ids = [e["id"] for e in everything]
    assert len(everything) == 5 and ids == sorted(set(ids))
    entry = everything[0]
    assert set(entry) == {"id", "notification_id", "user_id", "channel", "reason", "last_error", "attempts",
                          "failed_at"}
    assert (entry["channel"], entry["reason"], entry["attempts"]) == ("webhook", "rejected", 1)
    assert {(e["notification_id"], e["user_id"]) for e in await pages(user_id=alice)} == {
        (str(shipped), alice), (str(paid), alice)
    }
    assert {e["user_id"] for e in await pages(event="order.paid")} == {alice, bob}
    assert [e["user_id"] for e in await pages(event="order.paid", user_id=bob)] == [bob]
    assert await pages(event="order.refunded") == []

    # DELETE: 204, then gone (404 for a second delete and for a replay).
    victim = everything[2]["id"]
    assert (await plat.http.delete(f"/dlq/{victim}")).status_code == 204
    assert (await plat.http.delete(f"/dlq/{victim}")).status_code == 404
    assert (await plat.http.post(f"/dlq/{victim}/replay")).status_code == 404
    assert victim not in [e["id"] for e in await pages()]
    assert (await plat.http.post("/dlq/987654321/replay")).status_code == 404


async def cli(plat: Platform, *args: str) -> Any:
    """`python -m notiflow dlq ...` against the platform's stores and key namespace; its JSON output."""
    env = {
        **os.environ,
        **settings_env(plat.settings),
        "NOTIFLOW_REDIS_URL": plat.settings.redis_url_required,
        "NOTIFLOW_DATABASE_URL": plat.settings.database_url_required,
        "NOTIFLOW_LOG_LEVEL": "WARNING",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notiflow", "dlq", *args, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, err.decode()
    return orjson.loads(out)


async def test_the_dlq_command_lists_replays_and_purges(platform: PlatformFactory, sink: Sink) -> None:
    plat = await platform(max_retries=0)
    tag = secrets.token_hex(3)
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    nid = await plat.notify(user_ids=[alice, bob], event="cli.test", webhook_url=sink.url("switch", "cli"))
    await dead_lettered(plat, nid, [alice, bob])

    listed = await cli(plat, "list")
    assert {e["user_id"] for e in listed["entries"]} == {alice, bob}
    (only_alice,) = (await cli(plat, "list", "--user-id", alice))["entries"]
    assert only_alice["notification_id"] == str(nid) and only_alice["reason"] == "max_retries_exceeded"
    assert (await cli(plat, "list", "--event", "other.event"))["entries"] == []

    sink.switch["cli"] = 200
    assert await cli(plat, "replay", str(only_alice["id"])) == [{"id": only_alice["id"], "replayed": True}]
    assert await cli(plat, "replay", str(only_alice["id"])) == [{"id": only_alice["id"], "replayed": False}]
    await plat.wait_webhook(nid, [alice], "succeeded")
    assert [e["user_id"] for e in (await cli(plat, "list"))["entries"]] == [bob]

    # purge removes every row (the replayed one too); listing is then empty.
    assert await cli(plat, "purge") == {"purged": 2}
    assert (await cli(plat, "list"))["entries"] == []
    assert await plat.dlq() == []
    assert [h.status for h in sink.per_delivery("cli")[f"{nid}:{alice}"]] == [500, 200]
